"""A model directory the service's user cannot read is reported as what it is.

transformers says "No such file or directory: .../model.safetensors" for a weights file it may
not open (root saved it with mode 600, the image runs as uid 1000): the service must say that the
file is unreadable, for which user, and what to change. Root reads everything, so as root the
check runs in a forked child that has dropped to another uid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from reranker.model.loader import ModelNotReadable, TransformersEngine
from reranker.settings import Settings

OTHER_UID = 65534  # nobody


def start_error(model_dir: Path) -> str:
    """The error TransformersEngine.start() raises, as a user who does not own `model_dir`."""
    def attempt() -> str:
        try:
            TransformersEngine(Settings(model=str(model_dir), device="cpu")).start()
        except Exception as err:  # noqa: BLE001  (the message is what the test judges)
            return f"{type(err).__name__}: {err}"
        return "started"

    if os.geteuid() != 0:
        return attempt()
    # The child's uid may not read this interpreter's library (it can live under /root): it runs
    # with what the parent has imported, so the parent loads what start() imports lazily.
    import huggingface_hub.file_download  # noqa: F401, PLC0415
    from transformers import AutoConfig  # noqa: F401, PLC0415
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            os.write(write, attempt().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.fixture
def model_dir():
    # Not pytest's tmp_path: its parents are private to the user running the tests.
    top = Path(tempfile.mkdtemp(prefix="reranker-perm-"))
    top.chmod(0o755)
    model = top / "model"
    model.mkdir(mode=0o755)
    (model / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}')
    (model / "config.json").chmod(0o644)
    yield model
    shutil.rmtree(top)


def test_unreadable_weights_name_the_file_the_user_and_the_fix(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"\0" * 16)
    weights.chmod(0o600)
    message = start_error(model_dir)
    assert message.startswith(ModelNotReadable.__name__), message
    uid = OTHER_UID if os.geteuid() == 0 else os.getuid()
    assert f"runs as uid {uid}" in message
    assert "model.safetensors (mode 0600" in message and "config.json" not in message
    assert f"chmod -R a+rX {model_dir}" in message and "fsGroup" in message
    assert "No such file" not in message


def test_unreadable_subdirectory_is_reported(model_dir):
    sub = model_dir / "tokenizer"
    sub.mkdir()
    (sub / "vocab.json").write_text("{}")
    sub.chmod(0o700)
    message = start_error(model_dir)
    assert message.startswith(ModelNotReadable.__name__) and "tokenizer (mode 0700" in message, message
