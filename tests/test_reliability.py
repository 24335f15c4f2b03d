"""Trust under bad input and faults (issue 15): results are never stale or mixed, nothing is
silently left out, every user error is one clear line with exit code 2 and nothing stored is lost.

Each class of fault has a test; the CLI cases are one table of bad inputs."""
import os
import sqlite3
import stat
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import tokenred
from tokenred.checkpoint import CheckpointError, load_checkpoint
from tokenred.cli import main
from tokenred.evaluate import scan_folder
from tokenred.images import open_rgb
from tokenred.params import ParameterError
from tokenred.store import Key, ResultsStore, RunLock, StoreError

VIT = "vit_tiny_patch16_224"
TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=3)
TINY_ARGS = f"{VIT}:" + ",".join(f"{k}={v}" for k, v in TINY.items())
FAST = ["--backbones", VIT, "--backbone-args", TINY_ARGS, "--input-size", "32",
        "--batch-size", "2", "--warmup", "1", "--iters", "3", "--rounds", "1", "--no-progress"]
API_FAST = dict(input_size=32, batch_size=2, warmup=1, iters=3, rounds=1, backbone_kwargs=TINY)


def write_images(folder, count, seed, size=32):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"img_{i:02d}.png")


@pytest.fixture
def labeled(tmp_path):
    root = tmp_path / "data"
    for k, name in enumerate(["a_cat", "b_dog", "c_eel"]):
        write_images(root / name, 4, seed=k)
    return root


def tiny_checkpoint(path, **overrides):
    torch.manual_seed(1)
    model = tokenred.create_backbone(VIT, **{**TINY, **overrides})
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("tokenred: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


# ------------------------------------------------------------------------------------------------
# one line per user error: a table of bad inputs through the CLI
# ------------------------------------------------------------------------------------------------
def _empty_file(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    return ["--checkpoint", f"{VIT}={tmp_path / 'empty.safetensors'}"]


def _garbage_store(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.sqlite").write_bytes(b"this is not sqlite" * 100)
    return ["--out", str(tmp_path / "out")]


def _foreign_store(tmp_path):
    (tmp_path / "out").mkdir()
    conn = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    conn.execute("CREATE TABLE measurements (x INTEGER)")
    conn.commit()
    conn.close()
    return ["--out", str(tmp_path / "out")]


def _out_is_file(tmp_path):
    (tmp_path / "out").write_text("a file")
    return ["--out", str(tmp_path / "out")]


def _nan_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = tokenred.create_backbone(VIT, **TINY)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["blocks.1.mlp.fc1.weight"][0, :3] = float("nan")
    from safetensors.torch import save_file
    save_file(state, str(tmp_path / "nan.safetensors"))
    return ["--checkpoint", f"{VIT}={tmp_path / 'nan.safetensors'}"]


def _head_mismatch(tmp_path):
    tiny_checkpoint(tmp_path / "ten.safetensors", num_classes=10)
    return ["--checkpoint", f"{VIT}={tmp_path / 'ten.safetensors'}"]


def _resampled(tmp_path):
    tiny_checkpoint(tmp_path / "p4.safetensors", patch_size=4)
    return ["--checkpoint", f"{VIT}={tmp_path / 'p4.safetensors'}"]


BAD_CLI = [
    # (id, extra arguments or a function of tmp_path giving them, words the one line must hold)
    ("empty backbones", ["--backbones", ""], ["--backbones is empty"]),
    ("empty methods", ["--methods", ""], ["--methods is empty"]),
    ("backbone twice", ["--backbones", f"{VIT},{VIT}"], ["listed twice"]),
    ("crop 0", ["--crop-pct", "0"], ["crop_pct=0", "(0, 1]"]),
    ("crop negative", ["--crop-pct", "-1"], ["crop_pct=-1", "(0, 1]"]),
    ("crop above 1", ["--crop-pct", "1.5"], ["crop_pct=1.5"]),
    ("interpolation", ["--interpolation", "cubic"], ["interpolation='cubic'", "bicubic"]),
    ("mean length", ["--mean", "0.5,0.5"], ["mean=", "one or three"]),
    ("std zero", ["--std", "0"], ["std=", "above 0"]),
    ("mean text", ["--mean", "red"], ["--mean 'red'"]),
    ("amp fp32", ["--amp"], ["--amp", "float16 or bfloat16"]),
    ("where selects nothing", ["--methods", "tome:r=2,where=nothing.here*"], ["selects no site"]),
    ("where out of range", ["--methods", "tome:r=2,where=blocks:9"], ["tome:r=2,where=blocks:9"]),
    ("input below a patch", ["--input-size", "4"], ["cannot run at 4x4 px"]),
    ("unknown model argument", ["--backbone-args", f"{VIT}:not_an_arg=3"], ["cannot be built",
                                                                           "not_an_arg"]),
    ("backbone args for another", ["--backbone-args", "other_model:depth=2"],
     ["--backbone-args for 'other_model'"]),
    ("backbone args form", ["--backbone-args", "depth=2"], ["BACKBONE:key=value"]),
    ("checkpoint form", ["--checkpoint", "just-a-path.pt"], ["BACKBONE=PATH"]),
    ("missing checkpoint", ["--checkpoint", f"{VIT}=/nonexistent/w.pt"], ["not found",
                                                                         "/nonexistent/w.pt"]),
    ("empty safetensors", _empty_file, ["empty.safetensors", "not a readable safetensors"]),
    ("NaN weights", _nan_checkpoint, ["NaN/Inf", "blocks.1.mlp.fc1.weight (3 of"]),
    ("head shape", _head_mismatch, ["head.weight", "[3, 48]", "[10, 48]", "num_classes"]),
    ("resampled embedding", _resampled, ["resampled", "patch_embed.proj.weight",
                                         "--allow-resample"]),
    ("garbage results store", _garbage_store, ["results.sqlite", "not a readable tokenred",
                                               "move it away"]),
    ("foreign results store", _foreign_store, ["not a tokenred results store", "move it away"]),
    ("--out is a file", _out_is_file, ["is a file", "--out"]),
    ("data folder missing", ["--data", "/nonexistent/images"], ["/nonexistent/images"]),
]


@pytest.mark.parametrize("case", BAD_CLI, ids=[c[0] for c in BAD_CLI])
def test_cli_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, extra, words = case
    extra = extra(tmp_path) if callable(extra) else extra
    args = FAST + extra
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("results.sqlite")}
    assert main(["compare"] + args) == 2
    line = one_error_line(capsys)
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "run").exists()          # nothing half-made left behind
    for path, content in before.items():            # nothing stored was touched
        assert path.read_bytes() == content


def test_parser_rejects_bad_numbers(capsys):
    for flag in ("--limit", "--eval-batch-size", "--batch-size"):
        with pytest.raises(SystemExit) as exc:
            main(["compare", flag, "0"])
        assert exc.value.code == 2
        assert f"{flag} must be >= 1" in capsys.readouterr().err


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("TOKENRED_DEBUG", "1")
    with pytest.raises(ParameterError, match="crop_pct"):
        main(["compare"] + FAST + ["--crop-pct", "0", "--out", "unused"])
    monkeypatch.delenv("TOKENRED_DEBUG")
    with pytest.raises(ParameterError):
        main(["--debug", "compare"] + FAST + ["--crop-pct", "0", "--out", "unused"])


def test_report_and_visualize_errors_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    store = ResultsStore.in_run_dir(str(run))
    store.put(Key(VIT, "none", 32, 2, "float32", "cpu", "flops"), {"gflops": 1.0})
    store.close()
    conn = sqlite3.connect(run / "results.sqlite")
    conn.execute("UPDATE measurements SET payload = '{not json'")
    conn.commit()
    conn.close()
    assert main(["report", str(run)]) == 2
    assert "not valid JSON" in one_error_line(capsys)
    assert main(["visualize", "--method", "tome:r=2", "--image", str(tmp_path / "none.png")]) == 2
    assert "image not found" in one_error_line(capsys)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    assert main(["visualize", "--method", "tome:r=2", "--image", str(tmp_path / "bad.png")]) == 2
    assert "cannot be decoded as an image" in one_error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions: a read-only "
                                                "directory cannot be made here")
def test_read_only_out_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["compare"] + FAST + ["--out", str(ro / "run")]) == 2
        assert str(ro) in one_error_line(capsys)
    finally:
        ro.chmod(stat.S_IRWXU)


def _tmpfs(path, size, options=""):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs",
                           str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")


def test_read_only_file_system_out_is_one_line(tmp_path, capsys):
    """A read-only --out, as root too: a tmpfs mounted read-only refuses every write."""
    disk = tmp_path / "ro"
    _tmpfs(disk, "1m", ",ro")
    try:
        assert main(["compare"] + FAST + ["--out", str(disk / "run")]) == 2
        line = one_error_line(capsys)
        assert str(disk / "run") in line and "Read-only file system" in line
    finally:
        subprocess.run(["umount", str(disk)])


def test_disk_full_keeps_every_committed_row(tmp_path, capsys):
    disk = tmp_path / "disk"
    _tmpfs(disk, "160k")
    try:
        store = ResultsStore.in_run_dir(str(disk / "run"))
        kept = 0
        with pytest.raises(StoreError, match="disk is full"):
            for i in range(10_000):
                store.put(Key(VIT, f"m{i}", 32, 2, "float32", "cpu", "flops"), {"pad": "x" * 900})
                kept += 1
        store.close()
        again = ResultsStore.in_run_dir(str(disk / "run"))
        assert kept > 10 and len(again) == kept        # the store holds exactly what committed
        again.close()
        # the CLI reports the same fault as one line, and leaves no half-written report
        with open(disk / "filler", "wb") as fh:
            try:
                fh.write(b"\0" * 10_000_000)
            except OSError:
                pass
        assert main(["compare"] + FAST + ["--out", str(disk / "run2")]) == 2
        line = one_error_line(capsys)
        assert "full" in line or "No space" in line
        assert not [p for p in disk.rglob(".tmp-*")] and not (disk / "run2").exists()
    finally:
        if subprocess.run(["umount", str(disk)]).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)])
            pytest.fail("a file on the full disk was left open")


# ------------------------------------------------------------------------------------------------
# never stale, never mixed
# ------------------------------------------------------------------------------------------------
def test_store_keys_data_and_checkpoints_by_content(tmp_path, labeled):
    store = ResultsStore(str(tmp_path / "results.sqlite"))
    ckpt = tmp_path / "w.safetensors"
    tiny_checkpoint(ckpt)
    kw = dict(API_FAST, data=str(labeled), store=store, checkpoints={VIT: str(ckpt)})
    first = tokenred.compare([VIT], ["none"], **kw)
    assert first["eval_images"].iloc[0] == 12
    write_images(labeled / "a_cat", 6, seed=9)     # same path, more (and replaced) images
    grown = tokenred.compare([VIT], ["none"], **kw)
    assert grown["eval_images"].iloc[0] == 14       # measured again, not the stored 12
    top1 = grown["top1"].iloc[0]
    torch.manual_seed(5)
    other = tokenred.create_backbone(VIT, **TINY)
    with torch.no_grad():                           # a checkpoint replaced at the same path
        other.head.weight.mul_(-1)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(ckpt))
    replaced = tokenred.compare([VIT], ["none"], **kw)
    n_before = len(store)
    assert replaced["top1"].iloc[0] != top1                    # the new weights' accuracy
    assert len({k.variant for k, _ in store.items() if k.kind == "eval"}) == 3
    assert len({k.variant for k, _ in store.items() if k.kind == "flops"}) == 2
    again = tokenred.compare([VIT], ["none"], **kw)  # nothing changed: nothing measured
    assert len(store) == n_before and again["top1"].iloc[0] == replaced["top1"].iloc[0]


def test_run_directory_is_locked(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.sqlite").write_bytes(b"")
    holder = RunLock(str(run))
    try:
        assert main(["compare"] + FAST + ["--out", str(run)]) == 2
        line = one_error_line(capsys)
        assert f"pid {os.getpid()}" in line and "in use by another tokenred process" in line
    finally:
        holder.release()
    # a lock held by another process (not this one) is refused the same way
    code = ("import sys, time; from tokenred.store import RunLock; "
            f"RunLock({str(run)!r}); print('locked', flush=True); time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=f"pid {proc.pid}"):
            ResultsStore.in_run_dir(str(run), lock=True)
    finally:
        proc.kill()
        proc.wait()
    ResultsStore.in_run_dir(str(run), lock=True).close()   # the kernel dropped the dead's lock


def test_meaningless_timings_are_flagged(tmp_path):
    df = tokenred.compare([VIT], ["tome:r=2"], **{**API_FAST, "warmup": 0, "iters": 1})
    assert df["timing_flags"].notna().all()
    assert "only 1 timed forward" in df["timing_flags"].iloc[1]
    assert "baseline: no warm-up" in df["timing_flags"].iloc[1]
    text = tokenred.report.markdown_table(df)
    assert "× †" in text and "Timing that cannot mean much" in text
    ok = tokenred.compare([VIT], ["tome:r=2"], **{**API_FAST, "iters": 6, "warmup": 1})
    assert not ok["timing_flags"].fillna("").str.contains("timed forward|warm-up").any()


# ------------------------------------------------------------------------------------------------
# nothing silently left out or silently wrong
# ------------------------------------------------------------------------------------------------
def test_unreadable_class_folder_is_counted_and_named(labeled, monkeypatch):
    blocked = str(labeled / "b_dog")
    if os.geteuid() != 0:
        os.chmod(blocked, 0)
    else:   # root reads anything: make the listing fail as it does for a user
        real = os.scandir

        def scandir(path="."):
            if os.fspath(path) == blocked:
                raise PermissionError(13, "Permission denied", blocked)
            return real(path)
        monkeypatch.setattr(os, "scandir", scandir)
    try:
        images = scan_folder(labeled)
        assert len(images.paths) == 8 and images.unreadable[0][0] == blocked
        df = tokenred.compare([VIT], ["none"], data=str(labeled), **API_FAST)
    finally:
        os.chmod(blocked, 0o755)
    assert df["eval_images"].iloc[0] == 8 and df["eval_failed"].iloc[0] == 1
    assert df.attrs["failed_images"][0][0] == blocked
    assert "folder cannot be read" in df.attrs["failed_images"][0][1]
    assert "1 could not be read or decoded" in tokenred.report.markdown_table(df)


def test_decoding_keeps_the_meaning(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")          # 16-bit grayscale PNG
    rgb = np.asarray(open_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[..., 0], np.rint(ramp / 257.0), atol=1)
    assert rgb.mean() < 140                                     # not flattened to white
    # EXIF orientation 6 (rotate 90° clockwise to view): a 40x20 picture is shown 20x40
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = 255                                          # white left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    shown = np.asarray(open_rgb(tmp_path / "rot.jpg"))
    assert shown.shape == (40, 20, 3) and shown[:10].mean() > 200   # the left edge is on top
    # palette with transparency, RGBA, grayscale: 3-channel 8-bit like PIL's convert("RGB")
    pal = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    for name, img in (("rgba.png", Image.new("RGBA", (4, 4), (10, 20, 30, 0))),
                      ("gray.png", Image.new("L", (4, 4), 77))):
        img.save(tmp_path / name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                          # no PIL palette warning leaks
        assert np.asarray(open_rgb(tmp_path / "pal.png")).shape == (4, 4, 3)
    assert np.asarray(open_rgb(tmp_path / "rgba.png"))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(open_rgb(tmp_path / "gray.png"))[0, 0].tolist() == [77, 77, 77]


def test_limit_is_class_balanced_and_said(labeled):
    subset = scan_folder(labeled).head(6)
    assert subset.labels == [0, 0, 1, 1, 2, 2]
    assert "class-balanced" in subset.subset
    df = tokenred.compare([VIT], ["none"], data=str(labeled), limit=6, **API_FAST)
    assert df["eval_images"].iloc[0] == 6 and "class-balanced" in df["eval_subset"].iloc[0]
    assert "class-balanced" in tokenred.report.markdown_table(df)


def test_class_count_and_model_arguments_are_in_the_report(labeled, tmp_path):
    df = tokenred.compare([VIT], ["none"], data=str(labeled),
                          **{**API_FAST, "backbone_kwargs": {**TINY, "num_classes": 5}})
    text = tokenred.report.markdown_table(df)
    assert "has 3 classes but the model predicts 5" in text
    assert "built with img_size=32, patch_size=8" in text
    # the same from the store alone
    store = ResultsStore(str(tmp_path / "s.sqlite"))
    tokenred.compare([VIT], ["none"], data=str(labeled), store=store,
                     **{**API_FAST, "backbone_kwargs": {**TINY, "num_classes": 5}})
    again = tokenred.report.markdown_table(tokenred.report.table_from_store(store))
    assert "has 3 classes but the model predicts 5" in again and "built with" in again


def test_resampling_is_refused_unless_asked_then_said(tmp_path):
    tiny_checkpoint(tmp_path / "p4.safetensors", patch_size=4)
    model = tokenred.create_backbone(VIT, **TINY)
    with pytest.raises(CheckpointError, match="resampled to fit"):
        load_checkpoint(model, tmp_path / "p4.safetensors")
    df = tokenred.compare([VIT], ["none"], checkpoints={VIT: str(tmp_path / "p4.safetensors")},
                          allow_resample=True, **API_FAST)
    assert any("patch_embed.proj.weight [48, 3, 4, 4] -> [48, 3, 8, 8]" in n
               for n in df.attrs["notes"])


def test_copy_and_pickle_of_a_reduced_model_are_refused_clearly():
    import copy
    import io

    for name, method in ((VIT, "tome"), ("vmamba_tiny_pbc64", "quartermap")):
        model = tokenred.create_backbone(name, **(TINY if name == VIT else {}))
        handle = tokenred.apply(model, method)
        with pytest.raises(RuntimeError, match="cannot pickle or torch.save a model while"):
            torch.save(model, io.BytesIO())
        with pytest.raises(RuntimeError, match="cannot copy a model while"):
            copy.deepcopy(model)
        handle.remove()
        torch.save(model, io.BytesIO())       # unreduced again: saves as any module does
        assert isinstance(copy.deepcopy(model), type(model))


def test_bad_sizes_for_count_flops():
    model = tokenred.create_backbone(VIT, **TINY)
    for bad in (0, -3, 2.5, "32", (32, 0), True):
        with pytest.raises(ValueError, match="input_size"):
            tokenred.count_flops(model, bad)


def test_eval_progress_reaches_every_image(labeled):
    seen = []
    tokenred.compare([VIT], ["none"], data=str(labeled), eval_batch_size=5,
                     progress=seen.append, **API_FAST)
    evaluated = [m for m in seen if "evaluated" in m]
    assert evaluated[-1].endswith("evaluated 12/12 images")


def test_report_files_get_ordinary_permissions(tmp_path):
    df = tokenred.compare([VIT], ["none"], **API_FAST)
    old = os.umask(0o022)
    try:
        paths = tokenred.report.write_report(df, str(tmp_path), plots=False)
    finally:
        os.umask(old)
    for path in paths.values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def _readme_blocks():
    """(python fenced blocks, indented shell blocks) of the README."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    python = re.findall(r"```python\n(.*?)```", text, re.S)
    shell, current, blank, fenced = [], [], True, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced and line.startswith("    ") and (current or blank):
            current.append(line[4:])
        elif current:
            shell.append("\n".join(current))
            current = []
        blank = not line.strip()
    if current:
        shell.append("\n".join(current))

    def is_command(block: str) -> bool:   # not a file tree or a table laid out with spaces
        first = block.split()[0]
        return first in ("tokenred", "python3", "torchrun", "bash", "pip") or \
            first.startswith((".venv/", "CI="))
    return python, [b for b in shell if b.strip() and is_command(b)]


def test_readme_code_blocks_are_valid():
    """Every python block parses (the runnable ones also run, in test_readme.py); every shell
    sketch passes `bash -n`, and each `tokenred ...` command in it parses with tokenred's own
    argument parser, so no README command names a flag that does not exist."""
    import ast
    import re
    import shlex

    from tokenred.cli import build_parser

    python, shell = _readme_blocks()
    assert len(python) >= 4 and len(shell) >= 6
    for block in python:
        ast.parse(block)
    parser = build_parser()
    for block in shell:
        done = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
        assert done.returncode == 0, (block, done.stderr)
        for command in block.replace("\\\n", " ").splitlines():
            # [--flag VALUE] is usage notation for an optional part: check it too
            words = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command), comments=True)
            if "tokenred" in words:
                words = words[words.index("tokenred") + 1:]
                words = words[:words.index("&&")] if "&&" in words else words
                parser.parse_args(words)    # exits (fails the test) on an unknown flag


def test_compare_help_describes_the_current_default(capsys):
    from tokenred.presets import PRESETS

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " / ".join(PRESETS["default"]["methods"]) in text
    assert " ".join(PRESETS["default"]["doc"].split()) in text
