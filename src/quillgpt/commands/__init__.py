"""The ``quill`` commands, one module per command group; ``quillgpt.cli`` puts them together.

    common.py     the parser pieces every group uses: one-line usage errors, a flag per config field
    training.py   run_training: config -> run directory, data, Trainer, summary (quill train and sft)
    train.py      quill train
    runs.py       quill prepare, sample, eval, info
    notebook.py   quill runs, compare, report
    bench.py      quill bench train|sample|prepare|serve
    tasks.py      quill task eval, quill calc
    lessons.py    quill lesson, attention, seq2seq
    posttrain.py  quill sft, chat, reward, rl, dpo
    serve.py      quill serve
    zoo.py        quill zoo
    export.py     quill export, quill import

Each command module has an ``add_*`` function that adds its subcommands, and ``cmd_*``
functions that run them. They import the library and the two shared modules (``common``,
``training``), never each other and never ``quillgpt.cli`` (tests/test_imports.py checks both).
"""
