"""The lecture's side roads, runnable: each lesson prints its story and returns its numbers.

    quill lesson attention   four ways to average the past, ending at self-attention
    quill lesson norms       BatchNorm1d vs LayerNorm, by hand and against torch.nn
    quill lesson bigram      counting bigrams vs a trained embedding bigram
    quill attention RUN_DIR  a heatmap of one head's attention weights
    quill seq2seq            an encoder-decoder with cross-attention learns to reverse strings
"""
