"""jepa-clips core, in the order the data flows:

  1. frames and masking     a frame file -> uint8 pixels; a tubelet -> its seeded masked copy
  2. dataset and loader     a clip -> slices of <= SLICE_TUBELETS (clean, masked) tubelets, decoded in workers
  3. encoder                frozen V-JEPA 2: processed pixels -> one embedding per tubelet
  4. predictor head, loss   masked_emb + mask_frac -> predicted clean_emb; L1 on L2-normalised embeddings
  5. streaming encode       slices of many clips -> encoder batches -> per-clip embeddings, in order
  6. training and scoring   one epoch over encoded features; one scoring loop shared by eval.py and infer.py
  7. checkpoints            save / load / rebuild the head, pair it with its encoder
  8. RNG state              everything a resumed run needs to continue bit-identically
The plumbing that needs no torch (errors, config, files, locks) is in cli.py.

Shapes: a tubelet is T=data.tubelet_size frames of S=data.image_size pixels, uint8 (T, 3, S, S) before the
encoder's video processor and float (T, 3, S', S') after it; an embedding is D floats (D = the encoder's
hidden_size, 1024 for ViT-L). Manifests (reading, validating, building) live in manifest.py.
"""
import ctypes
import hashlib
import json
import os
import random
import sys
import threading
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import cli
import scorefile

FORMAT_VERSION = 1  # checkpoint format; bump when its keys change meaning
SLICE_TUBELETS = 8  # tubelets decoded at once per clip: memory stays flat however long a clip is


def _hand_big_buffers_back():
    """glibc raises its mmap threshold each time a big buffer is freed; after that, freed pixel batches stay
    in the heap, fragment it, and a process's RSS grows ~1.5 MB per frame of a long clip (issue 22). A fixed
    1 MiB threshold gives every buffer that big back to the OS when it is freed. Nothing off glibc."""
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError, TypeError):
        pass


_hand_big_buffers_back()


# ==================================================================================================
# 1. frames and masking
# ==================================================================================================

def _to_8bit(im):
    """16/32-bit integer and 32-bit float grey images scaled to 8 bits (convert("RGB") would clip them)."""
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return im
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F" and np.nanmax(arr, initial=0.0) <= 1.0:
        arr = arr * 255.0  # float images hold 0..1
    elif arr.max(initial=0) > 255:
        arr = arr / 256.0
    return Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8))


def load_frame(path, size):
    """PIL open -> RGB -> BICUBIC resize to size x size -> uint8 array (size, size, 3).

    No EXIF transpose (the research pipeline had none; `make check` warns about rotated frames). Raises
    OSError for anything that is not a regular file, without opening it."""
    if "#frame=" in str(path):  # `VIDEO#frame=N` (video.py): the decoded frame takes the same path below
        import video
        where = video.parse_ref(path)
        if where:
            return _frame_array(video.read_frame(*where), size)
    problem = cli.special_file_problem(path)
    if problem:
        raise OSError(problem)
    with Image.open(path) as im:
        im.load()
        return _frame_array(im, size)


def _frame_array(im, size):
    """A loaded PIL image -> RGB -> BICUBIC resize -> uint8 (size, size, 3): JPEGs and video frames alike."""
    rgb = _to_8bit(im).convert("RGB").resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def tubelet_seed(seed, clip_id, index):
    """Stable 64-bit seed for one tubelet's mask: same on every machine, order and batch size.

    The clip_id is part of it, so a clip's ids must be stable (manifest.py derives a missing one from the
    clip's own content)."""
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
        return mask_tubelet(tubelet, self.mask_ratio, self.patch_size,
                            tubelet_seed(self.seed, clip_id, index))


# ==================================================================================================
# 2. dataset and loader
# ==================================================================================================

class TubeletSlice(NamedTuple):
    """One loader item: tubelets [start, start + n) of clip `clip_index`, n <= SLICE_TUBELETS."""
    clip_index: int
    start: int
    is_last: bool                        # the clip's last slice
    # (n, T, 3, S', S') processed pixels; uint8 (n, T, 3, S, S) unprocessed
    clean: Optional[torch.Tensor]
    masked: Optional[torch.Tensor]       # same shape: the seeded masked copies
    mask_frac: Optional[torch.Tensor]    # (n,) fraction of each tubelet's patches masked
    error: Optional[str]                 # why a frame could not be read (then the tensors are None)


class JEPADataset(torch.utils.data.Dataset):
    """Slices of clips, in order: each clip is cut into non-overlapping tubelets (a trailing remainder of
    frames is dropped), tubelets are grouped SLICE_TUBELETS at a time, and each slice's frames are decoded
    once, so a worker never holds more than one slice of a long clip. Every tubelet gets its own seeded mask.

    `clips`: a list of manifest records, or manifest.ClipIndex (which parses a line only when asked and knows
    every clip's frame count)."""

    def __init__(self, clips, cfg, processor=None, slice_tubelets=SLICE_TUBELETS):
        d = cfg["data"]
        self.clips, self.processor, self.slice_tubelets = clips, processor, slice_tubelets
        self.size, self.tubelet_size = d["image_size"], d["tubelet_size"]
        self.masker = MaskTubelet(d["mask_ratio"], d["patch_size"], cfg["seed"])
        frames = getattr(clips, "frame_counts", None)
        frames = np.asarray([len(c["frames"]) for c in clips] if frames is None else frames, dtype=np.int64)
        self.tubelets = frames // self.tubelet_size  # (clips,) tubelets per clip
        self.slice_ends = np.cumsum(-(-self.tubelets // slice_tubelets))  # slices of clips 0..i together

    def __len__(self):
        return int(self.slice_ends[-1]) if len(self.slice_ends) else 0

    def __getitem__(self, j):
        i = int(np.searchsorted(self.slice_ends, j, side="right"))
        start = (j - (int(self.slice_ends[i - 1]) if i else 0)) * self.slice_tubelets
        stop = min(start + self.slice_tubelets, int(self.tubelets[i]))
        clip, t = self.clips[i], self.tubelet_size
        frames = []
        for path in clip["frames"][start * t:stop * t]:  # each frame decoded once, shared by its tubelet
            try:
                frames.append(load_frame(path, self.size))
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                return TubeletSlice(i, start, bool(stop == self.tubelets[i]), None, None, None,
                                    f"frame {path}: not readable ({e})")
        tubelets = np.stack(frames).reshape(stop - start, t, *frames[0].shape)
        masked, frac = [], []
        for k, tub in enumerate(tubelets, start):
            masked_tub, mask = self.masker(tub, clip["clip_id"], k)
            masked.append(masked_tub)
            frac.append(mask.mean())
        # (n, T, H, W, 3) -> (n, T, 3, H, W), the layout the video processor and the encoder take
        clean = torch.from_numpy(tubelets).permute(0, 1, 4, 2, 3)
        masked = torch.from_numpy(np.stack(masked)).permute(0, 1, 4, 2, 3)
        if self.processor is not None:
            both = self.processor(list(torch.cat([clean, masked])),
                                  return_tensors="pt")["pixel_values_videos"]
            clean, masked = both[:len(clean)], both[len(clean):]
        return TubeletSlice(i, start, bool(stop == self.tubelets[i]), clean, masked,
                            torch.tensor(frac, dtype=torch.float32), None)


def num_workers(cfg, device):
    """data.num_workers, or when null: enough to feed a GPU; on a CPU one, so decoding does not starve the
    encoder of cores."""
    if cfg["data"]["num_workers"] is not None:
        return cfg["data"]["num_workers"]
    cpus = os.cpu_count() or 1
    return min(16, cpus - 1) if device.type == "cuda" else (1 if cpus >= 2 else 0)


def _worker_init(_):
    torch.set_num_threads(1)  # workers decode and resize; the main process's threads belong to the encoder


def make_loader(dataset, workers):
    """Ordered, prefetch-bounded loader of slices (batch_size=None: one TubeletSlice per item)."""
    extra = {"prefetch_factor": 2, "worker_init_fn": _worker_init} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, **extra)


# ==================================================================================================
# 3. encoder
# ==================================================================================================

def resolve_device(name="auto"):
    """auto -> CUDA, then Apple MPS, then CPU; a named device that is not there is a cli.UserError."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise cli.UserError(f"--device {name}: expected auto, cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise cli.UserError("--device cuda: no CUDA GPU visible to PyTorch (use --device cpu or auto)")
    if name == "mps" and not has_mps:
        raise cli.UserError("--device mps: Apple MPS is not available here (use --device cpu or auto)")
    return torch.device(name)


def hub_reachable(timeout=3.0):
    """True when the hub answers one HTTP request within `timeout` s, so offline runs fail fast instead of
    waiting out the hub client's retries. Goes to HF_ENDPOINT when set and through the proxies in
    HTTPS_PROXY / HTTP_PROXY / NO_PROXY (urllib reads them as the hub client does); any HTTP status counts."""
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/") + "/api/models"
    answered = []

    def probe():
        try:
            opener = urllib.request.build_opener()  # a fresh ProxyHandler reads the proxy variables now
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:  # 401, 404, ...: the hub (or proxy) answered
            answered.append(True)
        except (OSError, ValueError):  # no route, no DNS, refused, timed out, malformed HF_ENDPOINT
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a join timeout bounds even a slow DNS lookup
    thread.start()
    thread.join(timeout + 1)
    return bool(answered)


def load_encoder_parts(name):
    """(model, processor) of a V-JEPA 2 hub id or local snapshot folder, or a cli.UserError saying what to
    do."""
    from transformers import AutoConfig, AutoModel, AutoVideoProcessor
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter
    hint = ("download a snapshot on a connected machine (hf download facebook/vjepa2-vitl-fpc64-256 "
            "--local-dir DIR) and pass ENCODER=DIR (--encoder DIR)")
    is_dir = os.path.isdir(name)
    if not is_dir and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        where = "" if os.path.isabs(name) else f" (a relative path is read from {os.getcwd()})"
        raise cli.UserError(f"encoder {name!r}: no such folder{where} and not a hub id (org/name); pass the "
                            f"snapshot folder by its absolute path: ENCODER=/abs/path (--encoder /abs/path)")
    if is_dir and not os.path.isfile(os.path.join(name, "config.json")):
        raise cli.UserError(f"encoder folder {name!r} has no config.json: "
                            f"not a Hugging Face model snapshot; {hint}")
    auto = (AutoConfig, AutoModel, AutoVideoProcessor)
    if not is_dir:
        try:  # the hub cache first: works offline without waiting for the hub client's retries
            return _load_checked(name, *auto, local_files_only=True)
        except OSError:
            pass
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable():
            raise cli.UserError(f"encoder {name!r}: not a local folder, not in the Hugging Face cache, and "
                            f"the hub is unreachable; {hint} (HF_ENDPOINT and HTTPS_PROXY are honoured)")
    try:
        return _load_checked(name, *auto)
    except (OSError, ValueError) as e:
        what = "folder" if is_dir else "hub id"
        raise cli.UserError(f"encoder {what} {name!r} could not be loaded ({str(e).splitlines()[0]}); {hint}")


def _load_checked(name, AutoConfig, AutoModel, AutoVideoProcessor, **kwargs):
    kwargs["trust_remote_code"] = False  # a snapshot never runs its own code here
    config = AutoConfig.from_pretrained(name, **kwargs)
    if config.model_type != "vjepa2":
        raise cli.UserError(f"encoder {name!r} is a {config.model_type!r} model, "
                            "not V-JEPA 2 (model_type vjepa2)")
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
        self.embed_dim = self.model.config.hidden_size  # D: the one source of the embedding size
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
            proc = {k: getattr(self.processor, k, None)
                    for k in ("crop_size", "size", "image_mean", "image_std")}
            h = hashlib.sha256(json.dumps([conf, proc], sort_keys=True, default=str).encode())
            encoder = self.model.encoder
            for p in (encoder.embeddings.patch_embeddings.proj.weight, encoder.layernorm.weight):
                h.update(p.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


# ==================================================================================================
# 4. predictor head and loss
# ==================================================================================================

class PredictorHead(nn.Module):
    """(masked_emb (B, D), mask_frac (B,)) -> predicted clean embedding (B, D).

    LayerNorm(D) -> concat mask_frac -> Linear(D+1, H) -> GELU -> Dropout -> Linear(H, D), as in the
    research."""

    def __init__(self, embed_dim, hidden_dim=1024, dropout=0.1):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim + 1, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, embed_dim))

    def forward(self, masked_emb, mask_frac):
        return self.mlp(torch.cat([self.norm(masked_emb), mask_frac.unsqueeze(1).to(masked_emb.dtype)],
                                  dim=1))


def jepa_loss(pred_emb, clean_emb):
    """L1 between L2-normalised predicted and clean embeddings."""
    return F.l1_loss(F.normalize(pred_emb, dim=1), F.normalize(clean_emb, dim=1))


def compute_cosine_similarity(a, b):
    """Row-wise cosine similarity of (B, D) x (B, D) -> (B,)."""
    return F.cosine_similarity(a, b, dim=1)


# ==================================================================================================
# 5. streaming encode
# ==================================================================================================

class ClipEmbeddings(NamedTuple):
    """encode_stream's record for one clip."""
    index: int                            # position of the clip in the dataset's clips
    clean_emb: Optional[torch.Tensor]     # (N, D) one per tubelet
    masked_emb: Optional[torch.Tensor]    # (N, D)
    mask_frac: Optional[torch.Tensor]     # (N,)
    error: Optional[str]                  # why the clip could not be read (then the tensors are None)


class _EncodeQueue:
    """encode_stream's state. Slices wait in loader order; their pixels queue up across clips and are encoded
    `n` tubelets at a time; embeddings go back to their slices in the same order, and a clip leaves once its
    last slice has all of its embeddings."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.slices = deque()  # TubeletSlices (pixels dropped) whose embeddings are not all handed out yet
        self.pixels = []       # [(clean, masked)] pixel tensors not encoded yet, in order
        self.pending = 0       # tubelets in self.pixels
        self.embs = []         # [(clean_emb, masked_emb)] encoded and not handed out, in order
        self.encoded = 0       # tubelets in self.embs
        self.clip_parts = []   # (slice without pixels, clean_emb, masked_emb) of the clip being completed

    def add(self, item):
        """Queue a slice's pixels for the encoder; the slice itself is kept without them (index, mask
        fractions, error), so a long clip holds only its embeddings until it is complete."""
        if item.error is None:
            self.pixels.append((item.clean, item.masked))
            self.pending += len(item.mask_frac)
        self.slices.append(item._replace(clean=None, masked=None))

    def encode(self, n):
        """Encode the next n pending tubelets, clean and masked views in one encoder call."""
        clean, masked = torch.cat([c for c, _ in self.pixels]), torch.cat([m for _, m in self.pixels])
        emb = self.encoder(torch.cat([clean[:n], masked[:n]])).cpu()
        self.embs.append((emb[:n], emb[n:]))
        # the rest copied, so the concatenation (already encoded pixels) is freed now, not at the next encode
        self.pixels = [(clean[n:].clone(), masked[n:].clone())] if n < len(clean) else []
        self.pending -= n
        self.encoded += n

    def _take(self, n):
        clean, masked = torch.cat([c for c, _ in self.embs]), torch.cat([m for _, m in self.embs])
        self.embs = [(clean[n:], masked[n:])] if n < len(clean) else []
        self.encoded -= n
        return clean[:n], masked[:n]

    def finished_clips(self):
        """Yield a ClipEmbeddings for every clip at the head of the queue that is complete."""
        while self.slices:
            item = self.slices[0]
            need = 0 if item.error else len(item.mask_frac)
            if need > self.encoded:
                return
            self.slices.popleft()
            self.clip_parts.append((item, *(self._take(need) if need else (None, None))))
            if item.is_last:
                yield self._clip_record()

    def _clip_record(self):
        parts, self.clip_parts = self.clip_parts, []
        index, error = parts[0][0].clip_index, next((p[0].error for p in parts if p[0].error), None)
        if error:
            return ClipEmbeddings(index, None, None, None, error)
        return ClipEmbeddings(index, torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]),
                              torch.cat([p[0].mask_frac for p in parts]), None)


def encode_stream(encoder, dataset, batch_size, num_workers, flush_every=None):
    """Encode every clip of a JEPADataset in order, batching tubelets across clips: yields ClipEmbeddings.

    Every `flush_every` clips a partial batch is encoded, so batches never straddle those boundaries (a run
    resumed at one sees exactly the same batches). Memory stays bounded: the loader prefetches a few slices,
    and fewer than batch_size + SLICE_TUBELETS tubelets of pixels wait here."""
    queue = _EncodeQueue(encoder)
    clips_loaded = 0
    for item in make_loader(dataset, num_workers):
        queue.add(item)
        while queue.pending >= batch_size:
            queue.encode(batch_size)
        clips_loaded += item.is_last
        if item.is_last and flush_every and clips_loaded % flush_every == 0 and queue.pending:
            queue.encode(queue.pending)
        yield from queue.finished_clips()
    if queue.pending:
        queue.encode(queue.pending)
    yield from queue.finished_clips()


# ==================================================================================================
# 6. training and scoring
# ==================================================================================================

class TubeletFeatures(NamedTuple):
    """Encoded (clean, masked) tubelet pairs the head trains on, one row per tubelet."""
    clean_emb: torch.Tensor   # (N, D)
    masked_emb: torch.Tensor  # (N, D)
    mask_frac: torch.Tensor   # (N,)

    @classmethod
    def cat(cls, parts):
        """Rows of several TubeletFeatures in order (empty tensors for none)."""
        if not parts:
            return cls(torch.empty(0), torch.empty(0), torch.empty(0))
        return cls(*(torch.cat(column) for column in zip(*parts)))

    def to(self, device):
        return TubeletFeatures(*(t.to(device) for t in self))


def train_epoch(head, optimizer, features, batch_size, generator, epoch):
    """One shuffled pass over TubeletFeatures; returns the mean loss.

    Raises FloatingPointError naming the epoch and batch when the loss stops being finite."""
    head.train()
    n = len(features.clean_emb)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for batch, start in enumerate(range(0, n, batch_size)):
        idx = order[start:start + batch_size]
        pred_emb = head(features.masked_emb[idx], features.mask_frac[idx])
        loss = jepa_loss(pred_emb, features.clean_emb[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, batch {batch}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
    return total / n


@torch.no_grad()
def validate_epoch(head, features, batch_size):
    """Mean loss over TubeletFeatures in eval mode (no dropout); None when there are none."""
    n = len(features.clean_emb)
    if n == 0:
        return None
    head.eval()
    total = 0.0
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        pred_emb = head(features.masked_emb[rows], features.mask_frac[rows])
        total += jepa_loss(pred_emb, features.clean_emb[rows]).item() * len(pred_emb)
    return total / n


@torch.no_grad()
def clip_embedding(clean_emb):
    """(N, D) clean tubelet embeddings -> (D,) float32: the clip's embedding, a row of OUT.emb.npy and of
    RUN/train_clip_emb.npy (knn_density compares the two)."""
    return clean_emb.float().mean(dim=0)


def tubelet_cosines(head, clean_emb, masked_emb, mask_frac):
    """(cos(pred, clean), cos(masked, clean)) per tubelet, head in eval mode; each (N,)."""
    head.eval()
    dev = next(head.parameters()).device
    clean_emb, masked_emb = clean_emb.to(dev), masked_emb.to(dev)
    pred_emb = head(masked_emb, mask_frac.to(dev))
    return (compute_cosine_similarity(pred_emb, clean_emb).cpu(),
            compute_cosine_similarity(masked_emb, clean_emb).cpu())


class ClipScore(NamedTuple):
    """score_clips' record for one clip."""
    index: int                          # position of the clip in the scored clips
    pred_cos: Optional[torch.Tensor]    # (N,) cos(predicted, clean) per tubelet; novelty is 1 - this
    masked_cos: Optional[torch.Tensor]  # (N,) cos(masked, clean): the no-predictor baseline
    clip_emb: Optional[torch.Tensor]    # (D,) mean of the clip's clean tubelet embeddings
    error: Optional[str]                # why the clip could not be read (then the tensors are None)

    def novelty(self):
        """Per-tubelet novelty, 1 - cos(predicted, clean), as floats: the one definition of the score."""
        return (1 - self.pred_cos).tolist()

    def baseline_novelty(self):
        """The same with the masked embedding in place of the prediction (the no-predictor baseline)."""
        return (1 - self.masked_cos).tolist()

    def score(self, aggregate):
        """The clip's score: its novelty aggregated (mean or max) and rounded as the scores file holds it."""
        return scorefile.clip_score(self.novelty(), aggregate)


def score_clips(encoder, head, clips, cfg, workers):
    """The scoring loop eval.py and infer.py share: encode `clips` in order (batched across clips) and compare
    the head's prediction with each tubelet's clean embedding. Yields one ClipScore per clip, in order."""
    dataset = JEPADataset(clips, cfg, encoder.processor)
    for clip in encode_stream(encoder, dataset, cfg["evaluation"]["batch_size"], workers):
        if clip.error:
            yield ClipScore(clip.index, None, None, None, clip.error)
            continue
        pred_cos, masked_cos = tubelet_cosines(head, clip.clean_emb, clip.masked_emb, clip.mask_frac)
        yield ClipScore(clip.index, pred_cos, masked_cos, clip_embedding(clip.clean_emb), None)


# ==================================================================================================
# 7. checkpoints
# ==================================================================================================

def save_checkpoint(path, head, optimizer, epoch, config, best_metric, **extra):
    """Atomically save the predictor head and everything needed to rebuild and resume it (plain types
    only)."""
    ckpt = {"format_version": FORMAT_VERSION, "model_state": head.state_dict(),
            "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
            "epoch": epoch, "config": config, "best_metric": best_metric, **extra}
    cli.atomic_write(path, lambda f: torch.save(ckpt, f))


CHECKPOINT_TYPES = {"format_version": int, "model_state": dict, "epoch": int, "config": dict,
                    "encoder_name": str, "encoder_fingerprint": str, "embed_dim": int}


def load_checkpoint(path):
    """Load a checkpoint with torch.load(weights_only=True) only: a file whose unpickling would run code is
    refused, and so is one whose keys are missing or of the wrong type."""
    path = Path(path)
    if not path.is_file():
        raise cli.UserError(f"{path}: checkpoint not found (pass CKPT=experiments/RUN/best.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError for torn or foreign files
        raise cli.UserError(f"{path}: not a jepa-clips checkpoint "
                            "(or one that would run code); refusing to load it")
    wrong = [k for k, kind in CHECKPOINT_TYPES.items()
             if not isinstance(ckpt, dict) or not isinstance(ckpt.get(k), kind)
             or isinstance(ckpt.get(k), bool)]
    if wrong:
        raise cli.UserError(f"{path}: not a jepa-clips checkpoint ({', '.join(wrong)} missing or malformed)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise cli.UserError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this code "
                        f"({FORMAT_VERSION}); update jepa-clips")
    return ckpt


def head_from_checkpoint(ckpt, path, device="cpu", model=None):
    """Rebuild the PredictorHead a checkpoint was saved from and load its weights. `model` is the resolved
    config's model section when the caller has it (else it is resolved from the checkpoint's config)."""
    try:
        m = model or cli.load_config(base=ckpt["config"])["model"]
        head = PredictorHead(ckpt["embed_dim"], m["predictor_hidden_dim"], m["predictor_dropout"])
        head.load_state_dict(ckpt["model_state"])
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise cli.UserError(f"{path}: its weights do not fit the head its config describes ({first}); "
                        f"not a usable jepa-clips checkpoint")
    bad = [name for name, w in head.state_dict().items() if not torch.isfinite(w).all()]
    if bad:  # train.py stops at the first non-finite loss, so only a damaged file has these
        raise cli.UserError(f"{path}: weights {', '.join(bad[:3])} hold NaN or infinity; not a usable "
                            f"jepa-clips checkpoint (use another one, e.g. an epoch_NNN.pt)")
    return head.to(device).eval()


def check_encoder_matches(ckpt, encoder, ckpt_path):
    """Refuse to pair a head with an encoder other than the one it was trained on."""
    if ckpt["embed_dim"] != encoder.embed_dim:
        raise cli.UserError(f"{ckpt_path}: head expects {ckpt['embed_dim']}-d embeddings but encoder "
                        f"{encoder.name!r} gives {encoder.embed_dim}-d; pass the training encoder "
                        f"({ckpt['encoder_name']!r}) with --encoder/ENCODER=")
    if ckpt["encoder_fingerprint"] != encoder.fingerprint:
        raise cli.UserError(f"{ckpt_path}: trained on encoder {ckpt['encoder_name']!r} (fingerprint "
                        f"{ckpt['encoder_fingerprint']}), but {encoder.name!r} has fingerprint "
                        f"{encoder.fingerprint}; pass the training encoder with --encoder/ENCODER=")


class Scorer(NamedTuple):
    """What eval.py and infer.py score with: a trained head paired with its own encoder and config."""
    checkpoint: dict
    config: dict
    encoder: "VJEPAEncoder"
    head: PredictorHead
    workers: int

    def score(self, clips):
        """score_clips over `clips` with this head, encoder and config: yields ClipScore."""
        return score_clips(self.encoder, self.head, clips, self.config, self.workers)


def encoder_path(name):
    """What a checkpoint stores beside the encoder name as given: the absolute path of a local snapshot
    folder (None for a hub id), so the checkpoint works from any folder."""
    return os.path.abspath(name) if os.path.isdir(name) else None


def encoder_to_load(ckpt, name):
    """The encoder name as trained, unless it is a relative folder not found from here and the checkpoint's
    resolved absolute path is (infer.py run from another folder); an --encoder given by hand is kept."""
    resolved = ckpt.get("encoder_path")
    if name == ckpt["encoder_name"] and not os.path.isdir(name) and isinstance(resolved, str) \
            and os.path.isdir(resolved):
        print(f"encoder {name!r} is not under {os.getcwd()}: using {resolved}, where training found it",
              file=sys.stderr)
        return resolved
    return name


def load_for_scoring(checkpoint, device="auto", sets=(), **named):
    """A Scorer for eval.py/infer.py from the checkpoint path, the device name, --set overrides and named
    config flags (e.g. encoder=...): the training config, of which only cli.MAY_CHANGE["scoring"] keys may be
    overridden (masks must match training), resolved once, and the encoder checked against the one the head
    was trained on."""
    ckpt = load_checkpoint(checkpoint)
    cfg = cli.load_config(None, sets, base=ckpt["config"], base_name=f"{checkpoint}: its saved config",
                          **named)  # a hand-edited config inside the file is named as the file
    cli.refuse_changes(ckpt["config"], cfg, "scoring", f"the training config of {checkpoint}",
                   "masks and features must match training, so only "
                   f"{', '.join(cli.MAY_CHANGE['scoring'])}* may differ")
    device = resolve_device(device)
    encoder = VJEPAEncoder(encoder_to_load(ckpt, cfg["model"]["encoder_name"]), device)
    check_encoder_matches(ckpt, encoder, checkpoint)
    head = head_from_checkpoint(ckpt, checkpoint, device, cfg["model"])
    return Scorer(ckpt, cfg, encoder, head, num_workers(cfg, device))


# ==================================================================================================
# 8. RNG state (exact resume)
# ==================================================================================================

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
