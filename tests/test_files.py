"""Atomic writes: a write killed half-way leaves the old file (or none), never half a file; and
every write in ``src/`` goes through ``chexnet_pl.files`` (a scan of the source's syntax tree)."""

from __future__ import annotations

import ast
import errno
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from chexnet_pl.command_runner import run_or_exit
from chexnet_pl.errors import DiskFullError
from chexnet_pl.files import (
    atomic_write,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "chexnet_pl"


@pytest.mark.slow
def test_a_write_killed_half_way_leaves_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("the old, complete file\n")
    writer = textwrap.dedent(
        f"""
        import sys, time
        from chexnet_pl.files import atomic_write
        with atomic_write({str(target)!r}) as partial, open(partial, "w") as out:
            out.write("half of a new file")
            out.flush()
            print("writing", flush=True)
            time.sleep(60)  # killed here, half-way through
            out.write(" and the rest")
        """
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert target.read_text() == "the old, complete file\n"
    # what was written so far is beside it, under another name; the next write replaces it
    assert (tmp_path / "table.csv.partial").read_text() == "half of a new file"
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n" and not (tmp_path / "table.csv.partial").exists()


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_write(target) as partial:
        partial.write_text('{"a": ')
        raise RuntimeError("stopped half-way")
    assert target.read_text() == '{"a": 1}' and list(tmp_path.iterdir()) == [target]
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    frame = pd.DataFrame({"x": [1, 2]})
    write_csv_atomic(frame, tmp_path / "c.csv", index=False)
    assert pd.read_csv(tmp_path / "c.csv").equals(frame)


def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "aucs.csv"
    write_text_atomic(target, "old")
    with pytest.raises(DiskFullError) as caught, atomic_write(target) as partial:
        partial.write_bytes(b"x" * 3000)
        raise OSError(errno.ENOSPC, "No space left on device")
    message = str(caught.value)
    assert "\n" not in message and caught.value.errno == errno.ENOSPC
    assert message.startswith(f"no space left on the disk of {tmp_path} while writing aucs.csv: ")
    assert "it needs more than the 3.0 KB written before the disk filled" in message
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    # When the writer knows the size, that is said; any other error is left as it was.
    with pytest.raises(DiskFullError, match=r"it needs 2.5 MB \("):
        with atomic_write(target, needed=2_500_000):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
    with pytest.raises(PermissionError):
        with atomic_write(target):
            raise PermissionError(errno.EACCES, "Permission denied")
    assert list(tmp_path.iterdir()) == [target]


def test_a_full_disk_under_a_write_of_a_library_is_one_line_too(tmp_path, caplog):
    def logger_writes(cfg):  # e.g. a Lightning logger's metrics.csv
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.csv"))

    with pytest.raises(SystemExit) as stopped:
        run_or_exit(logger_writes, None)
    assert stopped.value.code == 2
    assert caplog.records[-1].getMessage() == (
        f"no space left on the disk of {tmp_path} while writing metrics.csv (No space left on "
        "device): free space there, or write to another folder"
    )
    with pytest.raises(FileNotFoundError):  # any other OSError is not this one's to say
        run_or_exit(lambda cfg: open(tmp_path / "nowhere" / "x"), None)


# -- every write in src/ goes through chexnet_pl.files -------------------------------------------
# Calls that write a file, and which argument names it ("self": the object the method is called on).
WRITERS = {
    "to_csv": 0, "to_json": 0, "to_parquet": 0, "to_pickle": 0, "savefig": 0,
    "write_text": "self", "write_bytes": "self",
}  # fmt: skip
MODULE_WRITERS = {("torch", "save"): 1, ("jit", "save"): 1, ("np", "save"): 0, ("np", "savez"): 0,
                  ("json", "dump"): 1, ("pickle", "dump"): 1, ("shutil", "copyfile"): 1,
                  ("shutil", "copy"): 1, ("shutil", "copy2"): 1}  # fmt: skip
# Writes that cannot go through atomic_write, by (file, function): why each is still safe.
ALLOWED = {
    ("data/prepare.py", "_start_or_resume"): "the cache is built in <size>px.partial/ "
    "(resumable) and renamed into place only when complete",
    ("data/prepare.py", "_decode_all"): "errors.jsonl: an append log inside <size>px.partial/",
    ("data/http_fetch.py", "_write_body"): "<name>.part is resumed by HTTP Range requests and "
    "renamed to <name> only when its length and checksum are right",
    ("data/download.py", "_extract_member"): "into a staging folder; the images move into place "
    "only when the whole archive was read",
    ("data/synthetic.py", "generate_synthetic_nih"): "demo data: ensure_synthetic_nih builds it "
    "in <root>.partial/ and renames it into place",
    ("data/dataset.py", "_record_skip"): "skipped_images.csv: one appended line per image a "
    "training worker could not read, written while training",
    ("files.py", "unwritable_reason"): "a probe file, removed at once",
}


def _write_calls(tree: ast.AST):
    """(function name, call, the expression naming the file written) for each write call."""
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for call in ast.walk(function):
            if not isinstance(call, ast.Call):
                continue
            target = _destination(call)
            if target is not None:
                yield function, call, target


def _destination(call: ast.Call) -> ast.expr | None:
    func = call.func
    if isinstance(func, ast.Name) and func.id == "open":
        mode = (
            call.args[1]
            if len(call.args) > 1
            else next((k.value for k in call.keywords if k.arg == "mode"), None)
        )
        modes = [n.value for n in ast.walk(mode) if isinstance(n, ast.Constant)] if mode else []
        written = any(set(str(m)) & set("wax+") for m in modes)  # also "ab" if have else "wb"
        return call.args[0] if written else None
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value
    if isinstance(owner, ast.Name | ast.Attribute):
        name = owner.id if isinstance(owner, ast.Name) else owner.attr
        if (name, func.attr) in MODULE_WRITERS:
            return _argument(call, MODULE_WRITERS[(name, func.attr)])
    if func.attr == "save" and isinstance(owner, ast.Call):  # Image.fromarray(x).save(path)
        return _argument(call, 0)
    where = WRITERS.get(func.attr)
    if where == "self":
        return owner
    return None if where is None else _argument(call, where)


def _argument(call: ast.Call, index: int) -> ast.expr | None:
    return call.args[index] if len(call.args) > index else None  # to_csv(): a string, no file


def _safe_names(function: ast.AST) -> set[str]:
    """Names bound to a temporary file of ``atomic_write`` (or a file opened on one), or to an
    in-memory buffer."""
    safe: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            call = node.context_expr
            if isinstance(call, ast.Call):
                callee = ast.unparse(call.func)
                opened = callee == "open" and call.args and ast.unparse(call.args[0]) in safe
                if callee.endswith("atomic_write") or opened:
                    safe.add(node.optional_vars.id)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            if ast.unparse(node.value.func).endswith("BytesIO"):
                safe |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return safe


def test_every_write_in_src_goes_through_atomic_write():
    raw, used = [], set()
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        for function, call, target in _write_calls(tree):
            if isinstance(target, ast.Name) and target.id in _safe_names(function):
                continue
            if (relative, function.name) in ALLOWED:
                used.add((relative, function.name))
            else:
                raw.append(f"{relative}:{call.lineno} in {function.name}: {ast.unparse(call)}")
    assert not raw, (
        "writes that do not go through chexnet_pl.files (write_csv_atomic, write_text_atomic, "
        "write_json_atomic, write_bytes_atomic or atomic_write):\n" + "\n".join(raw)
    )
    assert used == set(ALLOWED), f"allowed writes that are no longer there: {set(ALLOWED) - used}"


def test_the_scan_finds_raw_writes():
    """The scan above would fail on each kind of raw write, and passes the atomic forms."""
    source = textwrap.dedent(
        """
        def raw(table, path, figure, model, image):
            table.to_csv(path / "a.csv", index=False)
            (path / "b.txt").write_text("x")
            figure.savefig(path / "c.png")
            torch.save(model, path / "d.ckpt")
            Image.fromarray(image).save(path / "e.png")
            with open(path / "f.txt", "w") as out:
                out.write("x")
            open(path / "g.bin", "ab" if path.exists() else "wb").close()

        def atomic(table, path, model):
            with atomic_write(path) as partial:
                table.to_csv(partial)
            with atomic_write(path) as partial, open(partial, "wb") as stream:
                torch.save(model, stream)
            buffer = io.BytesIO()
            torch.jit.save(model, buffer)
            return table.to_csv(index=False)
        """
    )
    found = {}
    for function, call, target in _write_calls(ast.parse(source)):
        if not (isinstance(target, ast.Name) and target.id in _safe_names(function)):
            found.setdefault(function.name, []).append(call.lineno)
    assert found == {"raw": [3, 4, 5, 6, 7, 8, 10]}
