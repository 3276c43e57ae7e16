"""What every entry script shares, and nothing that needs torch (so a merge or a report starts small and
fast: `import report` took 3.5 s here, 2.7 s of it torch, until eval.py imported torch and jepa lazily; now
0.4 s, checked by tests/test_imports.py):

  1. errors and entry points   UserError (one line, exit 2), run_cli, the SIGKILL test hook, scoring flags
  2. config                    config.yaml as defaults and schema, typed overrides, what a resume may change
  3. files and locks           only regular files in and out, atomic writes, one writer per output
"""
import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import signal
import stat
import sys
from pathlib import Path

import yaml

CONFIG_PATH = Path(__file__).with_name("config.yaml")


# ==================================================================================================
# 1. errors and entry points
# ==================================================================================================

class UserError(Exception):
    """Bad input or environment: printed as `error: ...` lines without a traceback; exit status `code`."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def run_cli(main, on_interrupt="nothing was lost; run the same command again"):
    """Run an entry script's main(); user errors become one line per problem (exit 2), internal errors keep
    their traceback. `on_interrupt`: what is true after Ctrl-C for this script."""
    try:
        sys.exit(main() or 0)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print(f"interrupted: {on_interrupt}", file=sys.stderr)
        sys.exit(130)


_KILL_AT = os.environ.get("JEPA_TEST_KILL_AT", "")  # read once: the hook costs one comparison when unset


def kill_hook_for_tests(name, count=None):
    """Test hook, a no-op in normal runs: JEPA_TEST_KILL_AT=name[:count] SIGKILLs the process at this point,
    so the tests can prove that a kill anywhere loses nothing."""
    if not _KILL_AT:
        return
    want, _, at = _KILL_AT.partition(":")
    if want == name and (not at or str(count) == at):
        os.kill(os.getpid(), signal.SIGKILL)


def add_scoring_args(p, checkpoint_required=True):
    """Flags shared by eval.py and infer.py."""
    p.add_argument("--checkpoint", required=checkpoint_required,
                   help="checkpoint from train.py (best.pt, last.pt, epoch_NNN.pt)")
    p.add_argument("--manifest", required=True, help="JSONL manifest of clips to score")
    p.add_argument("--output", required=True, help="where to write the results (a regular file; a symlink is "
                                                   "written through to its target)")
    add_config_flags(p, ["data_root", "encoder"])
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, repeatable; only {', '.join(MAY_CHANGE['scoring'])}* may "
                        f"differ from training")


def scores_commands(doc, scores_help, **commands):
    """A parser with one subcommand per name=help of `commands` (dest "command"), each taking --scores,
    --config and --set: the commands over a scores file (select, similar; learn fit, apply).
    Returns (parser, [subparser per command])."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    subs = [sub.add_parser(name, help=text) for name, text in commands.items()]
    for q in subs:
        q.add_argument("--scores", required=True, help=scores_help)
        q.add_argument("--config", default=str(CONFIG_PATH), help="YAML with the keys to change "
                       "(default: the shipped config.yaml)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. selection.max_similarity=0.9; repeatable")
    return p, subs


def add_clip_inputs(p, manifest_use, labels_use):
    """--manifest, --data-root and --labels as report.py and selection.py take them."""
    p.add_argument("--manifest", help=f"manifest JSONL the clips were scored from: {manifest_use}")
    p.add_argument("--data-root", help="folder relative frame paths in --manifest resolve against (default: "
                                       "the manifest's folder)")
    p.add_argument("--labels", help=f"labels JSONL {{clip_id, binary_label: 0|1|null}}: {labels_use} "
                                    f"(default: none)")


# ==================================================================================================
# 2. config
# ==================================================================================================

# the named flags, each a shortcut for one config key: (key, type, help); --set reaches every other key
CONFIG_FLAGS = {
    "encoder": ("model.encoder_name", str, "V-JEPA 2 hub id or local snapshot folder"),
    "data_root": ("data.root", str, "folder relative frame paths resolve against (default: the manifest's)"),
    "lr": ("training.lr", float, "AdamW learning rate"),
    "epochs": ("training.epochs", int, "total epochs (with --resume, training continues up to this number)"),
    "batch_size": ("training.batch_size", int, "predictor-head batch size"),
    "seed": ("seed", int, "seeds the split, the masks, the head's init and the shuffling"),
    "top": ("selection.top", int, "clips to pick"),
    "k": ("selection.similar_k", int, "neighbours to list after the clip itself"),
}
# config keys (or key prefixes) a command may change relative to the run it continues or scores
MAY_CHANGE = {
    # model.encoder_name may be spelled differently (hub id vs snapshot, relative vs absolute path): the
    # encoder's weights fingerprint is checked separately, so another encoder is still refused
    "resume": ("training.epochs", "data.num_workers", "training.encode_batch_size", "model.encoder_name"),
    "scoring": ("data.root", "data.num_workers", "model.encoder_name", "evaluation."),
}
NULLABLE = {"data.root": str, "data.num_workers": int}  # keys whose default is null: their type
CHOICES = {"evaluation.aggregate": ("mean", "max")}
# the allowed range of each number key (a list key: of each element; a NULLABLE key may also be null):
# "[a, b]" / "[a, b)" / ">= a" / "> a"; validate_config checks them, with the one rule RANGES cannot say
RANGES = {
    "seed": "[0, 2**63)", "data.mask_ratio": "[0, 1]", "data.tubelet_size": ">= 1",
    "data.patch_size": ">= 1", "data.num_workers": ">= 0", "data.val_fraction": "[0, 1)",
    "model.predictor_hidden_dim": ">= 1", "model.predictor_dropout": "[0, 1)",
    "training.lr": "> 0", "training.epochs": ">= 1", "training.batch_size": ">= 1",
    "training.encode_batch_size": ">= 1", "training.encode_chunk_clips": ">= 1",
    "training.checkpoint_every": ">= 1",
    "evaluation.batch_size": ">= 1", "evaluation.k_values": ">= 1", "evaluation.knn_k": ">= 1",
    "selection.top": ">= 1", "selection.max_similarity": "[-1, 1]", "selection.per_scene": ">= 0",
    "selection.similar_k": ">= 1", "selection.explore_share": "[0, 1]", "selection.chunk_mb": ">= 1",
}
RANGE_NOTES = {"selection.per_scene": " (0 = no limit)"}


def _bound(text):
    base, _, power = text.strip(" >=").partition("**")
    return float(base) ** int(power) if power else float(base)


def in_range(value, rule):
    """Whether a number is in a RANGES rule."""
    if rule.startswith(">"):
        return value >= _bound(rule) if rule.startswith(">=") else value > _bound(rule)
    low, high = (_bound(x) for x in rule[1:-1].split(","))
    return low <= value and (value <= high if rule.endswith("]") else value < high)


def add_config_flags(parser, names):
    """Add the named config flags (--lr, --epochs, ...) to an argparse parser, typed and with help."""
    for name in names:
        key, kind, text = CONFIG_FLAGS[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{text} ({key})")


def config_flags(args):
    """{flag name: value} of the named config flags an argparse namespace has."""
    return {name: getattr(args, name) for name in CONFIG_FLAGS if hasattr(args, name)}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _coerce(key, value, default, where):
    """Return `value` as the type of `default` (or NULLABLE[key]); raise UserError naming the key
    otherwise."""
    want = NULLABLE.get(key, type(default))
    if value is None and key in NULLABLE:
        return None
    if want is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads `1e-4` as text, so accept numeric text for float keys
            return float(value)
        except ValueError:
            pass
    elif want is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif want is list and isinstance(value, list) and all(isinstance(x, int) for x in value):
        return value
    elif want in (str, bool) and isinstance(value, want):
        return value
    raise UserError(f"{where}: {key} must be {want.__name__}, got {value!r}")


def _set_key(cfg, key, value):
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value


def _yaml_file(path, what="config file"):
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found (leave --config out to use the shipped config.yaml)")
    try:
        user = yaml.safe_load(p.read_text(encoding="utf-8-sig")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(user, dict):
        raise UserError(f"{p}: expected a mapping of sections to keys")
    return user


def _set_layer(item):
    key, eq, text = item.partition("=")
    if not eq:
        raise UserError(f"--set {item}: expected section.key=value, e.g. --set training.lr=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise UserError(f"--set {item}: the value is not valid YAML ({str(e).splitlines()[0]}); quote it")
    return f"--set {key}", key.strip(), value


def load_config(path=None, sets=(), base=None, base_name="saved config", **named):
    """Resolved config dict: config.yaml defaults <- `base` (a run's or checkpoint's config; errors in it
    name `base_name`) <- --config file <- named flags <- --set section.key=value. Unknown keys and wrong
    types raise UserError listing the valid keys; keys of `base` that this version no longer has are ignored
    (an older run still loads)."""
    defaults = yaml.safe_load(CONFIG_PATH.read_text())
    flat_defaults = _flatten(defaults)
    cfg = json.loads(json.dumps(defaults))  # deep copy
    layers = [(base_name, k, v) for k, v in _flatten(base or {}).items() if k in flat_defaults]
    if path and Path(path).resolve() != CONFIG_PATH.resolve():
        layers += [(str(path), k, v) for k, v in _flatten(_yaml_file(path)).items()]
    layers += [(f"--{flag.replace('_', '-')}", CONFIG_FLAGS[flag][0], v) for flag, v in named.items()
               if v is not None]
    layers += [_set_layer(item) for item in sets]
    for where, key, value in layers:
        if key not in flat_defaults:
            valid = ", ".join(sorted(flat_defaults))
            raise UserError(f"{where}: unknown config key '{key}'. Valid keys: {valid}")
        _set_key(cfg, key, _coerce(key, value, flat_defaults[key], where))
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """Range checks on a resolved config (RANGES, CHOICES and the image size rule); raise UserError naming
    the key and the allowed range."""
    flat, d = _flatten(cfg), cfg["data"]
    checks = [(d["patch_size"] < 1 or (d["image_size"] >= 1 and d["image_size"] % d["patch_size"] == 0),
               "data.image_size", f"must be a positive multiple of data.patch_size ({d['patch_size']})")]
    for key, rule in RANGES.items():
        value = flat[key]
        ok = (value is None and key in NULLABLE) or all(in_range(v, rule) for v in
                                                      (value if isinstance(value, list) else [value]))
        words = f"in {rule}" if rule.startswith("[") else rule
        checks.append((ok, key, f"must {'all ' if isinstance(value, list) else ''}be {words}"
                                f"{' or null' if key in NULLABLE else ''}{RANGE_NOTES.get(key, '')}"))
    for key, options in CHOICES.items():
        checks.append((flat[key] in options, key, f"must be one of {', '.join(options)}"))
    for ok, key, rule in checks:
        if not ok:
            raise UserError(f"config key {key} = {flat[key]!r} {rule}")


def refuse_changes(old_cfg, new_cfg, command, what, why):
    """UserError when `new_cfg` differs from `old_cfg` in a key MAY_CHANGE[command] does not allow. Keys the
    old config lacks (added to config.yaml since) are not changes."""
    old, new = _flatten(old_cfg), _flatten(new_cfg)
    changed = [f"{k} {old[k]!r} -> {new[k]!r}" for k in new
               if k in old and new[k] != old[k] and not k.startswith(MAY_CHANGE[command])]
    if changed:
        raise UserError(f"{', '.join(changed)} would change {what}; {why}")


# ==================================================================================================
# 3. files and locks
# ==================================================================================================

def decode_jsonl_line(raw, where, what):
    """(object, None) of one JSONL line's bytes, or (None, problem). A UTF-8 BOM is accepted."""
    try:
        return json.loads(raw.decode("utf-8-sig")), None
    except UnicodeDecodeError:
        return None, f"{where}: not UTF-8 text (re-save the {what} as UTF-8)"
    except json.JSONDecodeError as e:
        return None, f"{where}: not JSON ({e.msg} at column {e.colno})"
    except (ValueError, RecursionError) as e:  # a 5,000-digit number, or lists nested 100,000 deep
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(":")[0]
        return None, f"{where}: not JSON this reader accepts ({why}); fix or delete the line"


def special_file_problem(path):
    """Why `path` cannot be a frame, found without opening it (opening a FIFO blocks forever), or None.

    Only regular files (or links to one) are frames: not folders, named pipes, sockets or device nodes."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    return "not a regular file but " + next((name for is_kind, name in kinds if is_kind(mode)),
                                            "a special file")


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform (e.g. Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def output_target(path):
    """The regular file an output path writes: a symlink is written through to its target (the link stays).
    UserError for a folder, a device node, a pipe or any other non-regular file, which are never replaced."""
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as e:  # e.g. a path through a file
        raise UserError(f"{path}: output folder {target.parent} is not writable ({e.strerror or e}); "
                        f"choose another output path")
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder; pass a file path (e.g. {Path(path) / 'out.json'})")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path}: is not a regular file (a device, pipe or socket); outputs are only written "
                        f"to regular files: choose another output path")
    return target


def refuse_input_as_output(output, inputs):
    """UserError when an output path names one of the same command's inputs (it would be overwritten)."""
    out = os.path.realpath(output)
    for flag, path in inputs.items():
        if path and os.path.realpath(path) == out:
            raise UserError(f"{output}: is also this command's {flag}; writing it would destroy the input: "
                            f"choose another output path")


def check_output(path, inputs=None, needed_bytes=1 << 20):
    """Fail before any encoding when `path` cannot be written: not a regular file, an input of the same
    command (`inputs`: {flag: path}), a folder that cannot be created or written, or too little free space."""
    refuse_input_as_output(path, inputs or {})
    folder = output_target(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    except OSError as e:
        raise UserError(f"{path}: output folder {folder} is not writable ({e.strerror or e}); "
                        f"choose another output path or fix its permissions")
    if free < needed_bytes:
        raise UserError(f"{path}: only {free >> 20} MB free in {folder}, about {needed_bytes >> 20} MB "
                        "needed; free some space or choose another output path")


def _write_error(path, e):
    advice = {errno.ENOSPC: "free space", errno.EDQUOT: "free space", errno.EISDIR: "pass a file path",
              errno.EROFS: "choose another path"}.get(e.errno, "free space or fix permissions")
    return UserError(f"cannot write {path}: {e.strerror or e}; {advice}, then rerun (finished work is kept)")


def atomic_write(path, write):
    """Write a file via `write(fileobj)` to a temp file in the same folder, fsync, then os.replace it into
    place, so a reader never sees a partial file whenever the process dies. Writes through a symlink to its
    target; refuses to replace anything but a regular file (see output_target)."""
    target = output_target(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        kill_hook_for_tests("atomic_write", target.name)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder refuses even this; there is nothing to clean up then
            pass
        raise _write_error(path, e)


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_earlier_set(*paths):
    """Delete an earlier run's files of a set (a scores file and its .emb.npy, a selection and its CSV)
    before the new set is written, so a kill between two of its writes never leaves a new file beside an old
    one that no longer matches it; the rerun writes the whole set again. A symlink's target is deleted, not
    the link."""
    for path in paths:
        target = output_target(path)
        try:
            target.unlink(missing_ok=True)
        except OSError as e:
            raise _write_error(path, e)


@contextlib.contextmanager
def exclusive_lock(path, what):
    """Hold an exclusive advisory lock (flock) on the lock file `path` for the `with` block, or raise a
    UserError naming the process that holds it. The kernel drops the lock when its holder dies, so a killed
    run never blocks the rerun; the file stays behind, harmless."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise _write_error(path, e)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (os.pread(fd, 200, 0).decode(errors="replace").strip()
                  or "a process whose pid is not recorded")
        os.close(fd)
        raise UserError(f"{what} is being written by another process ({holder}); wait for it to finish or "
                        f"stop it, then rerun")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def file_sha256(path):
    """SHA-256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
