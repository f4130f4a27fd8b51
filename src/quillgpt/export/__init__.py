"""Models that leave quillgpt, and models that come in (``quill export``, ``quill import``).

- ``hf``: a run directory -> a Hugging Face ``transformers`` folder (GPT-2 or Llama layout),
  with a fast tokenizer, a chat template for SFT runs and a model card (``card``).
- ``importer``: a local GPT-2-family folder -> a quill run directory.
- ``gguf``: a run directory -> one GGUF file for llama.cpp and Ollama.

transformers and gguf are heavy, so they are an extra (``pip install quillgpt[export]``) and
are imported only inside the functions that need them (``require``).
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from quillgpt.errors import ConfigError, QuillError

EXTRA_HINT = "pip install quillgpt[export]"


class ExtraMissingError(QuillError):
    """An optional package of the export extra is not installed."""


def require(module: str) -> ModuleType:
    """Import ``module`` (transformers, gguf) or fail with one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExtraMissingError(f"{module} is not installed: quill export/import need the export extra, "
                           f"{EXTRA_HINT}") from None


def check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty: choose a new folder or remove it")


def check_out_file(out: Path, suffix: str) -> None:
    """Refuse an ``--out`` file that could not be written, before the run is loaded (seconds for a big one)."""
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise ConfigError(f"--out {out} does not end in {suffix}: name the file, e.g. {out.with_suffix(suffix)}")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: name a new file, e.g. {out / ('model' + suffix)}")
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} already exists: choose a new file name or remove it")
    place = out.parent  # the folder it goes in, or the nearest one that exists (made at write time)
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        why = "is not a folder" if not place.is_dir() else "is not writable"
        raise ConfigError(f"cannot write --out {out}: {place} {why}: choose a place you can write to")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return True  # not a PID this system could have made: leave it alone
    return True


def remove_stale_temps(out: Path) -> None:
    """Delete the ``.NAME.tmp-PID`` files and folders a killed export or import left next to ``out``.

    Only those whose process is gone: a live one may be another export writing right now. (A
    recycled PID keeps a stale one until that process ends: harmless, just not cleaned yet.)
    """
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there, not probe it
        return
    prefix = f".{out.name}.tmp-"
    if not out.parent.is_dir():
        return
    for path in out.parent.iterdir():
        pid = path.name[len(prefix):] if path.name.startswith(prefix) else ""
        # ASCII digits only ('²'.isdigit() is true, int('²') fails), and no longer than a PID can be
        if not (pid.isascii() and pid.isdigit() and len(pid) <= 10) or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A temp folder next to ``out`` to write into; renamed to ``out`` only if the block succeeds.

    So a failure (bad input found half-way, a full disk, Ctrl-C) never leaves a half-written
    ``out`` behind: it leaves nothing.
    """
    out = Path(out)
    check_out_dir(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    with unwritable_is_one_line(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)  # ours (a PID reused) and those of killed runs
        tmp.mkdir()
    try:
        with unwritable_is_one_line(out):
            yield tmp
            check_out_dir(out)  # someone may have created it meanwhile
            if out.exists():
                out.rmdir()  # empty (checked): rename needs it gone
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def unwritable_is_one_line(out: Path) -> Iterator[None]:
    """A folder that cannot be made or written (no such parent, no permission, a full disk) is one line."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"cannot write --out {out}: {exc.strerror or exc}: choose a place you can write to, "
                          "with room to spare") from None


def staged_file(out: Path) -> Path:
    """The temp path next to a single output file (GGUF); the caller renames it."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"--out {out} already exists: choose a new file name or remove it")
    with unwritable_is_one_line(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
    return out.parent / f".{out.name}.tmp-{os.getpid()}"
