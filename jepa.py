"""jepa-clips core: config, manifests, masking, dataset, V-JEPA 2 encoder, predictor head, loss,
streaming encoder loop, training engine and checkpoints. The entry scripts (train.py, eval.py,
infer.py) are thin wrappers around what is here.

Shapes: a tubelet is T=data.tubelet_size frames of S=data.image_size pixels, uint8 (T, 3, S, S);
an embedding is D floats (D = the encoder's hidden_size, 1024 for ViT-L).
"""
import hashlib
import json
import os
import random
import re
import signal
import socket
import sys
import threading
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from PIL import Image

CONFIG_PATH = Path(__file__).with_name("config.yaml")
FORMAT_VERSION = 1  # checkpoint format; bump when its keys change meaning
SCORE_DECIMALS = 6  # scores are rounded so re-runs, resumes and shards give byte-identical files


# ---- errors and entry points ----

class UserError(Exception):
    """Bad input or environment: printed as `error: ...` lines without a traceback; exit status `code`."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def run_cli(main):
    """Run an entry script's main(); user errors become one line per problem, internal errors keep their traceback."""
    try:
        sys.exit(main() or 0)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted: run the same command with --resume to continue", file=sys.stderr)
        sys.exit(130)


def kill_point(name, count=None):
    """Test hook: JEPA_TEST_KILL_AT=name[:count] SIGKILLs this process here, to prove crash safety."""
    spec = os.environ.get("JEPA_TEST_KILL_AT", "")
    want, _, at = spec.partition(":")
    if want == name and (not at or str(count) == at):
        os.kill(os.getpid(), signal.SIGKILL)


# ---- config ----

NAMED_FLAGS = {"lr": "training.lr", "epochs": "training.epochs", "batch_size": "training.batch_size",
               "seed": "seed", "encoder": "model.encoder_name", "data_root": "data.root"}
NULLABLE = {"data.root": str, "data.num_workers": int}  # keys whose default is null: their type
CHOICES = {"evaluation.aggregate": ("mean", "max"), "evaluation.metric": ("cosine_similarity",)}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _coerce(key, value, default, where):
    """Return `value` as the type of `default` (or NULLABLE[key]); raise UserError naming the key otherwise."""
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


def load_config(path=None, sets=(), base=None, **named):
    """Resolved config dict: config.yaml defaults <- `base` (a checkpoint's config) <- --config file <- named
    flags <- --set section.key=value. Unknown keys and wrong types raise UserError listing the valid keys."""
    defaults = yaml.safe_load(CONFIG_PATH.read_text())
    flat_defaults = _flatten(defaults)
    cfg = json.loads(json.dumps(defaults))  # deep copy
    layers = [("checkpoint config", k, v) for k, v in _flatten(base or {}).items()]
    if path and Path(path).resolve() != CONFIG_PATH.resolve():
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: config file not found (leave --config out to use the shipped config.yaml)")
        try:
            user = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})")
        if not isinstance(user, dict):
            raise UserError(f"{p}: expected a mapping of sections to keys")
        layers += [(str(p), k, v) for k, v in _flatten(user).items()]
    layers += [(f"--{flag.replace('_', '-')}", NAMED_FLAGS[flag], v) for flag, v in named.items() if v is not None]
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq:
            raise UserError(f"--set {item}: expected section.key=value, e.g. --set training.lr=1e-3")
        layers.append((f"--set {key}", key.strip(), yaml.safe_load(text) if text.strip() else None))
    for where, key, value in layers:
        if key not in flat_defaults:
            valid = ", ".join(sorted(flat_defaults))
            raise UserError(f"{where}: unknown config key '{key}'. Valid keys: {valid}")
        _set_key(cfg, key, _coerce(key, value, flat_defaults[key], where))
    validate_config(cfg)
    return cfg


def validate_config(cfg):
    """Range checks on a resolved config; raise UserError naming the key and the allowed range."""
    d, t = cfg["data"], cfg["training"]
    checks = [
        (0.0 <= d["mask_ratio"] <= 1.0, "data.mask_ratio", "must be in [0, 1]"),
        (d["patch_size"] >= 1 and d["image_size"] >= 1 and d["image_size"] % d["patch_size"] == 0,
         "data.image_size", f"must be a positive multiple of data.patch_size ({d['patch_size']})"),
        (d["tubelet_size"] >= 1, "data.tubelet_size", "must be >= 1"),
        (d["num_workers"] is None or d["num_workers"] >= 0, "data.num_workers", "must be >= 0 or null"),
        (0.0 <= d["val_fraction"] < 1.0, "data.val_fraction", "must be in [0, 1)"),
        (cfg["model"]["predictor_hidden_dim"] >= 1, "model.predictor_hidden_dim", "must be >= 1"),
        (0.0 <= cfg["model"]["predictor_dropout"] < 1.0, "model.predictor_dropout", "must be in [0, 1)"),
        (t["lr"] > 0, "training.lr", "must be > 0"),
        (t["epochs"] >= 1, "training.epochs", "must be >= 1"),
        (t["batch_size"] >= 1, "training.batch_size", "must be >= 1"),
        (t["encode_batch_size"] >= 1, "training.encode_batch_size", "must be >= 1"),
        (t["encode_chunk_clips"] >= 1, "training.encode_chunk_clips", "must be >= 1"),
        (t["checkpoint_every"] >= 1, "training.checkpoint_every", "must be >= 1"),
        (cfg["evaluation"]["batch_size"] >= 1, "evaluation.batch_size", "must be >= 1"),
        (all(k >= 1 for k in cfg["evaluation"]["k_values"]), "evaluation.k_values", "must all be >= 1"),
    ]
    for key, options in CHOICES.items():
        section, name = key.split(".")
        checks.append((cfg[section][name] in options, key, f"must be one of {', '.join(options)}"))
    for ok, key, rule in checks:
        if not ok:
            section, _, name = key.rpartition(".")
            raise UserError(f"config key {key} = {cfg[section][name]!r} {rule}")


# ---- frames and masking ----

def load_frame(path, size):
    """PIL open -> RGB -> BICUBIC resize to size x size -> uint8 array (size, size, 3)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: scale to 8 bits before RGB
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr / (256.0 if arr.max() > 255 else 1.0), 0, 255).astype(np.uint8))
        rgb = im.convert("RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def tubelet_seed(seed, clip_id, index):
    """Stable 64-bit seed for one tubelet's mask: same on every machine, order and batch size."""
    digest = hashlib.sha256(f"{seed}|{clip_id}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def mask_tubelet(tubelet, mask_ratio, patch_size, seed):
    """Zero k = round(mask_ratio * count) random (t, h, w) patches of a uint8 tubelet (T, H, W, 3).

    Returns (masked tubelet, bool mask (T, H/patch, W/patch))."""
    t, h, w = tubelet.shape[0], tubelet.shape[1] // patch_size, tubelet.shape[2] // patch_size
    count = t * h * w
    chosen = np.random.default_rng(seed).permutation(count)[:round(mask_ratio * count)]
    mask = np.zeros(count, dtype=bool)
    mask[chosen] = True
    mask = mask.reshape(t, h, w)
    pixel_mask = mask.repeat(patch_size, axis=1).repeat(patch_size, axis=2)
    masked = tubelet.copy()
    masked[pixel_mask] = 0
    return masked, mask


class MaskTubelet:
    """Callable form of mask_tubelet with the config's ratio, patch size and seed."""

    def __init__(self, mask_ratio=0.75, patch_size=16, seed=0):
        self.mask_ratio, self.patch_size, self.seed = mask_ratio, patch_size, seed

    def __call__(self, tubelet, clip_id, index):
        return mask_tubelet(tubelet, self.mask_ratio, self.patch_size, tubelet_seed(self.seed, clip_id, index))


# ---- dataset and loader ----

class JEPADataset(torch.utils.data.Dataset):
    """One item per clip. Each frame is decoded once; the clip is cut into non-overlapping tubelets
    (a trailing remainder is dropped) and each tubelet is masked with its own seeded mask.

    Item: {"index", "clean", "masked": (N, T, 3, S', S') float from `processor` (or uint8 (N, T, 3, S, S)
    without one), "mask_frac": (N,), "error": None or why the clip could not be read}."""

    def __init__(self, records, cfg, processor=None):
        d = cfg["data"]
        self.records, self.processor = records, processor
        self.size, self.tubelet = d["image_size"], d["tubelet_size"]
        self.masker = MaskTubelet(d["mask_ratio"], d["patch_size"], cfg["seed"])

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        rec = self.records[i]
        n = len(rec["frames"]) // self.tubelet
        frames = []
        for path in rec["frames"][:n * self.tubelet]:  # each frame decoded once, shared by its tubelet
            try:
                frames.append(load_frame(path, self.size))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                return {"index": i, "error": f"frame {path}: not readable ({e})"}
        frames = np.stack(frames)
        clean, masked, frac = [], [], []
        for k in range(n):
            tub = frames[k * self.tubelet:(k + 1) * self.tubelet]
            m_tub, mask = self.masker(tub, rec["clip_id"], k)
            clean.append(tub)
            masked.append(m_tub)
            frac.append(mask.mean())
        # (N, T, H, W, 3) -> (N, T, 3, H, W), the layout the video processor and the encoder take
        clean = torch.from_numpy(np.stack(clean)).permute(0, 1, 4, 2, 3)
        masked = torch.from_numpy(np.stack(masked)).permute(0, 1, 4, 2, 3)
        if self.processor is not None:
            both = self.processor(list(torch.cat([clean, masked])), return_tensors="pt")["pixel_values_videos"]
            clean, masked = both[:n], both[n:]
        return {"index": i, "clean": clean, "masked": masked,
                "mask_frac": torch.tensor(frac, dtype=torch.float32), "error": None}


def num_workers(cfg, device):
    """data.num_workers, or when null: enough to feed a GPU; on a CPU one, so decoding does not starve the encoder."""
    if cfg["data"]["num_workers"] is not None:
        return cfg["data"]["num_workers"]
    cpus = os.cpu_count() or 1
    return min(16, cpus - 1) if device.type == "cuda" else (1 if cpus >= 2 else 0)


def _worker_init(_):
    torch.set_num_threads(1)  # workers decode and resize; the main process's threads belong to the encoder


def make_loader(dataset, num_workers):
    """Ordered, prefetch-bounded loader of clips (batch_size=None: one item per clip)."""
    extra = {"prefetch_factor": 2, "worker_init_fn": _worker_init} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, **extra)


# ---- encoder ----

def resolve_device(name="auto"):
    """auto -> CUDA, then Apple MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU visible to PyTorch (use --device cpu or auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: expected auto, cpu, cuda or mps")
    return torch.device(name)


def _hub_reachable(timeout=3.0):
    """True when the hub's host answers within `timeout` s (DNS included), so offline runs fail fast."""
    host = re.sub(r"^https?://", "", os.environ.get("HF_ENDPOINT", "https://huggingface.co")).split("/")[0]
    answered = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(answered)


def load_encoder_parts(name):
    """(model, processor) of a V-JEPA 2 hub id or local snapshot folder, or a UserError saying what to do."""
    from transformers import AutoConfig, AutoModel, AutoVideoProcessor
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter
    hint = ("download a snapshot on a connected machine (hf download facebook/vjepa2-vitl-fpc64-256 "
            "--local-dir DIR) and pass ENCODER=DIR (--encoder DIR)")
    is_dir = os.path.isdir(name)
    if not is_dir and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise UserError(f"encoder {name!r}: no such folder and not a hub id (org/name); {hint}")
    if is_dir and not os.path.isfile(os.path.join(name, "config.json")):
        raise UserError(f"encoder folder {name!r} has no config.json: not a Hugging Face model snapshot; {hint}")
    kwargs = {"trust_remote_code": False}
    if not is_dir:
        try:  # the hub cache first: works offline without waiting for the hub client's retries
            kwargs_local = dict(kwargs, local_files_only=True)
            return _load_checked(name, AutoConfig, AutoModel, AutoVideoProcessor, kwargs_local)
        except OSError:
            pass
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
            raise UserError(f"encoder {name!r}: not a local folder, not in the Hugging Face cache, and the hub "
                            f"is unreachable; {hint}")
    try:
        return _load_checked(name, AutoConfig, AutoModel, AutoVideoProcessor, kwargs)
    except (OSError, ValueError) as e:
        what = "folder" if is_dir else "hub id"
        raise UserError(f"encoder {what} {name!r} could not be loaded ({str(e).splitlines()[0]}); {hint}")


def _load_checked(name, AutoConfig, AutoModel, AutoVideoProcessor, kwargs):
    config = AutoConfig.from_pretrained(name, **kwargs)
    if config.model_type != "vjepa2":
        raise UserError(f"encoder {name!r} is a {config.model_type!r} model, not V-JEPA 2 (model_type vjepa2)")
    model = AutoModel.from_pretrained(name, config=config, **kwargs)
    return model, AutoVideoProcessor.from_pretrained(name, **kwargs)


class VJEPAEncoder(nn.Module):
    """Frozen V-JEPA 2 encoder: processed pixels (B, T, 3, S', S') -> mean-pooled embedding (B, D).

    Uses get_vision_features (the encoder alone), never the HF model's forward with its own predictor."""

    def __init__(self, name_or_dir, device="cpu"):
        super().__init__()
        self.name = name_or_dir
        self.model, self.processor = load_encoder_parts(name_or_dir)
        self.model.requires_grad_(False).eval().to(device)
        self.device = torch.device(device)
        self.embed_dim = self.model.config.hidden_size
        self._fingerprint = None

    def train(self, mode=True):  # frozen: stays in eval mode whatever the parent module does
        return super().train(False)

    def process(self, videos):
        """uint8 (B, T, 3, H, W) -> the encoder's own video processor -> float (B, T, 3, S', S')."""
        return self.processor(list(videos), return_tensors="pt")["pixel_values_videos"]

    def forward(self, pixel_values):
        with torch.inference_mode():
            tokens = self.model.get_vision_features(pixel_values.to(self.device, non_blocking=True))
            emb = tokens.mean(dim=1)
        return emb.clone()  # a normal tensor again, usable by autograd outside inference mode

    @property
    def fingerprint(self):
        """Identity of the weights and preprocessing: same for a hub id and its local snapshot."""
        if self._fingerprint is None:
            conf = {k: v for k, v in self.model.config.to_dict().items()
                    if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")}
            proc = {k: getattr(self.processor, k, None) for k in ("crop_size", "size", "image_mean", "image_std")}
            h = hashlib.sha256(json.dumps([conf, proc], sort_keys=True, default=str).encode())
            for p in (self.model.encoder.embeddings.patch_embeddings.proj.weight, self.model.encoder.layernorm.weight):
                h.update(p.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


# ---- predictor, model, loss ----

class PredictorHead(nn.Module):
    """(masked_emb (B, D), mask_frac (B,)) -> predicted clean embedding (B, D)."""

    def __init__(self, embed_dim, hidden_dim=1024, dropout=0.1):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim + 1, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, embed_dim))

    def forward(self, masked_emb, mask_frac):
        return self.mlp(torch.cat([self.norm(masked_emb), mask_frac.unsqueeze(1).to(masked_emb.dtype)], dim=1))


class JEPAModel(nn.Module):
    """Frozen encoder + trainable head: (pixel_values, masked_pixel_values, mask_frac) -> (clean_emb, pred_emb)."""

    def __init__(self, encoder, head):
        super().__init__()
        self.encoder, self.head = encoder, head

    def encode_pair(self, pixel_values, masked_pixel_values):
        """Clean and masked views in one encoder call: (B, T, 3, S', S') x2 -> (clean_emb, masked_emb) (B, D)."""
        emb = self.encoder(torch.cat([pixel_values, masked_pixel_values]))
        return emb[:len(pixel_values)], emb[len(pixel_values):]

    def forward(self, pixel_values, masked_pixel_values, mask_frac):
        clean_emb, masked_emb = self.encode_pair(pixel_values, masked_pixel_values)
        return clean_emb, self.head(masked_emb, mask_frac.to(masked_emb.device))


def jepa_loss(pred_emb, clean_emb):
    """L1 between L2-normalised predicted and clean embeddings."""
    return F.l1_loss(F.normalize(pred_emb, dim=1), F.normalize(clean_emb, dim=1))


def compute_cosine_similarity(a, b):
    """Row-wise cosine similarity of (B, D) x (B, D) -> (B,)."""
    return F.cosine_similarity(a, b, dim=1)


# ---- streaming encoding ----

def encode_stream(encoder, dataset, batch_size, num_workers, flush_every=None):
    """Encode every clip of `dataset` in order, batching tubelets across clips (clean + masked in one call).

    Yields (index, clean_emb (N, D), masked_emb (N, D), mask_frac (N,), error) per clip, in dataset order.
    `flush_every` clips, a partial batch is encoded, so batches never straddle those boundaries (a run resumed
    at one then sees exactly the same batches). Memory stays bounded: the loader prefetches a few clips and at
    most one batch waits here."""
    waiting = deque()  # loader items whose embeddings are not all computed yet
    todo_clean, todo_masked = [], []  # pixel tensors not yet encoded, in order
    done_clean, done_masked = [], []  # embeddings computed, not yet handed out
    n_todo = 0

    def encode(n):
        nonlocal n_todo, todo_clean, todo_masked
        clean, masked = torch.cat(todo_clean), torch.cat(todo_masked)
        emb = encoder(torch.cat([clean[:n], masked[:n]]))
        done_clean.append(emb[:n].cpu())
        done_masked.append(emb[n:].cpu())
        todo_clean, todo_masked = [clean[n:]], [masked[n:]]
        n_todo -= n

    def ready():
        nonlocal done_clean, done_masked
        while waiting:
            item = waiting[0]
            need = 0 if item["error"] else len(item["mask_frac"])
            have = sum(len(e) for e in done_clean)
            if need > have:
                return
            waiting.popleft()
            if item["error"]:
                yield item["index"], None, None, None, item["error"]
                continue
            clean, masked = torch.cat(done_clean), torch.cat(done_masked)
            done_clean, done_masked = [clean[need:]], [masked[need:]]
            yield item["index"], clean[:need], masked[:need], item["mask_frac"], None

    for loaded, item in enumerate(make_loader(dataset, num_workers), 1):
        waiting.append(item)
        if not item["error"]:
            todo_clean.append(item["clean"])
            todo_masked.append(item["masked"])
            n_todo += len(item["mask_frac"])
        while n_todo >= batch_size:
            encode(batch_size)
        if flush_every and loaded % flush_every == 0 and n_todo:
            encode(n_todo)
        yield from ready()
    if n_todo:
        encode(n_todo)
    yield from ready()


# ---- training engine ----

def train_epoch(head, optimizer, features, batch_size, generator, epoch):
    """One shuffled pass over features {"clean", "masked": (N, D), "mask_frac": (N,)}; returns the mean loss.

    Raises FloatingPointError naming the epoch and batch when the loss stops being finite."""
    head.train()
    n = len(features["clean"])
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for batch, start in enumerate(range(0, n, batch_size)):
        idx = order[start:start + batch_size]
        pred_emb = head(features["masked"][idx], features["mask_frac"][idx])
        loss = jepa_loss(pred_emb, features["clean"][idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, batch {batch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / n


@torch.no_grad()
def validate_epoch(head, features, batch_size):
    """Mean loss over features in eval mode (no dropout); None when there are none."""
    n = len(features["clean"])
    if n == 0:
        return None
    head.eval()
    total = 0.0
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        pred_emb = head(features["masked"][sl], features["mask_frac"][sl])
        total += jepa_loss(pred_emb, features["clean"][sl]).item() * len(features["clean"][sl])
    return total / n


@torch.no_grad()
def tubelet_cosines(head, clean_emb, masked_emb, mask_frac):
    """(cos(pred, clean), cos(masked, clean)) per tubelet, head in eval mode; each (N,)."""
    head.eval()
    dev = next(head.parameters()).device
    clean_emb, masked_emb = clean_emb.to(dev), masked_emb.to(dev)
    pred_emb = head(masked_emb, mask_frac.to(dev))
    return (compute_cosine_similarity(pred_emb, clean_emb).cpu(),
            compute_cosine_similarity(masked_emb, clean_emb).cpu())


def clip_score(novelty, aggregate):
    """A clip's score from its tubelets' novelty (1 - cos): mean or max, rounded for stable files."""
    value = max(novelty) if aggregate == "max" else sum(novelty) / len(novelty)
    return round(float(value), SCORE_DECIMALS)


# ---- RNG state (exact resume) ----

def rng_state(shuffle_gen):
    """Python, NumPy, torch (and CUDA) RNG states plus the shuffling generator, as plain types."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": shuffle_gen.get_state()}


def set_rng_state(state, shuffle_gen):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), n[4]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle_gen.set_state(state["shuffle"])


# ---- files and checkpoints ----

def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform (e.g. Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Write a file via `write(fileobj)` to a temp file in the same folder, fsync, then os.replace it into place,
    so a reader never sees a partial file whenever the process dies."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        kill_point("atomic_write", path.name)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}; free space or fix permissions, then rerun "
                        f"(finished work is kept)")


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path, head, optimizer, epoch, config, best_metric, **extra):
    """Atomically save the predictor head and everything needed to rebuild and resume it (plain types only)."""
    ckpt = {"format_version": FORMAT_VERSION, "model_state": head.state_dict(),
            "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
            "epoch": epoch, "config": config, "best_metric": best_metric, **extra}
    atomic_write(path, lambda f: torch.save(ckpt, f))


CHECKPOINT_KEYS = ("format_version", "model_state", "epoch", "config", "encoder_name", "encoder_fingerprint",
                   "embed_dim")


def load_checkpoint(path):
    """Load a checkpoint with torch.load(weights_only=True) only: a file whose unpickling would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found (pass CKPT=experiments/RUN/best.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError for torn files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: refusing to load: not a plain-data jepa-clips checkpoint ({first[:160]})")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        raise UserError(f"{path}: not a jepa-clips checkpoint (missing keys)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this code "
                        f"({FORMAT_VERSION}); update jepa-clips")
    return ckpt


def head_from_checkpoint(ckpt, device="cpu"):
    """Rebuild the PredictorHead a checkpoint was saved from and load its weights."""
    m = ckpt["config"]["model"]
    head = PredictorHead(ckpt["embed_dim"], m["predictor_hidden_dim"], m["predictor_dropout"])
    head.load_state_dict(ckpt["model_state"])
    return head.to(device).eval()


def changed_keys(old_cfg, new_cfg, allowed):
    """Flattened keys whose value differs between two configs, except those starting with an `allowed` prefix.
    Keys the old config lacks (added to config.yaml since) are not changes."""
    old, new = _flatten(old_cfg), _flatten(new_cfg)
    return [(k, old[k], new[k]) for k in new if k in old and new[k] != old[k] and not k.startswith(allowed)]


SCORING_CHANGES = ("data.root", "data.num_workers", "model.encoder_name", "evaluation.")


def load_for_scoring(args):
    """(checkpoint, config, encoder, head, workers) for eval.py/infer.py: the training config with only
    data.root, data.num_workers, model.encoder_name and evaluation.* overridable (masks must match training)."""
    ckpt = load_checkpoint(args.checkpoint)
    cfg = load_config(None, args.set, base=ckpt["config"], encoder=args.encoder, data_root=args.data_root)
    changed = changed_keys(ckpt["config"], cfg, SCORING_CHANGES)
    if changed:
        raise UserError(f"{', '.join(k for k, _, _ in changed)} cannot differ from the training config of {args.checkpoint} "
                        f"(masks and features must match training)")
    device = resolve_device(args.device)
    encoder = VJEPAEncoder(cfg["model"]["encoder_name"], device)
    check_encoder_matches(ckpt, encoder, args.checkpoint)
    return ckpt, cfg, encoder, head_from_checkpoint(ckpt, device), num_workers(cfg, device)


def add_scoring_args(p, checkpoint_required=True):
    """Flags shared by eval.py and infer.py."""
    p.add_argument("--checkpoint", required=checkpoint_required, help="checkpoint from train.py (best.pt, last.pt, epoch_NNN.pt)")
    p.add_argument("--manifest", required=True, help="JSONL manifest of clips to score")
    p.add_argument("--output", required=True, help="where to write the results")
    p.add_argument("--data-root", help="folder relative frame paths resolve against (default: the manifest's)")
    p.add_argument("--encoder", help="V-JEPA 2 hub id or local snapshot (default: the one the head was trained on)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override evaluation.*, data.num_workers or data.root, repeatable")


def check_output_writable(path):
    """Fail before any encoding when the output folder cannot be written."""
    folder = Path(path).resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{path}: output folder {folder} is not writable ({e.strerror or e}); choose another --output")


def check_encoder_matches(ckpt, encoder, ckpt_path):
    """Refuse to pair a head with an encoder other than the one it was trained on."""
    if ckpt["embed_dim"] != encoder.embed_dim:
        raise UserError(f"{ckpt_path}: head expects {ckpt['embed_dim']}-d embeddings but encoder {encoder.name!r} "
                        f"gives {encoder.embed_dim}-d; pass the training encoder ({ckpt['encoder_name']!r}) "
                        f"with --encoder/ENCODER=")
    if ckpt["encoder_fingerprint"] != encoder.fingerprint:
        raise UserError(f"{ckpt_path}: trained on encoder {ckpt['encoder_name']!r} (fingerprint "
                        f"{ckpt['encoder_fingerprint']}), but {encoder.name!r} has fingerprint "
                        f"{encoder.fingerprint}; pass the training encoder with --encoder/ENCODER=")
