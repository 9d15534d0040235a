"""Vision encoders of vision-language models (Qwen2.5-VL, Qwen3-VL, Qwen3.5) from the
`vision_config` of their Hugging Face config: images and video frames → patches, encoder
FLOPs and bytes, and the image tokens that enter the language model's prefill.

The architecture follows Hugging Face transformers' `modeling_qwen2_5_vl.py` and
`modeling_qwen3_vl.py`:
- a Conv3d patch embedding over `temporal_patch_size` frames of `patch_size`² pixels;
- `depth` ViT blocks (fused QKV, output projection, MLP), attention bidirectional and restricted
  to one temporal group of one image (`cu_seqlens` repeats grid_h·grid_w grid_t times);
  Qwen2.5-VL attends inside windows of `window_size` pixels (8×8 patches for 112 px, 14 px
  patches) in every block but `fullatt_block_indexes`; Qwen3-VL attends over the whole image;
- MLP gated (SiLU gate·up, down) in Qwen2.5-VL, plain (fc1, GELU, fc2) in Qwen3-VL/Qwen3.5;
- a patch merger: `spatial_merge_size`² neighbouring patches concatenated, Linear(4h→4h), GELU,
  Linear(4h→out_hidden_size); Qwen3-VL adds one more merger per `deepstack_visual_indexes`.
Images are resized first as the processors' `smart_resize` does (transformers
`image_processing_qwen2_vl.py`): each side rounded to a multiple of patch_size·merge_size, the
pixel count clamped to [min_pixels, max_pixels].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from servesim.errors import ServesimError

# Processor pixel limits (preprocessor_config.json of the Hugging Face repos): Qwen2.5-VL
# min_pixels 3136, max_pixels 12845056; Qwen3-VL size {shortest_edge 65536, longest_edge
# 16777216} (both are pixel counts in its processor).
_PIXELS = {"qwen2_5_vl": (3136, 12845056), "qwen3_vl": (65536, 16777216)}
ACT_BYTES = 2  # the ViT runs and hands its embeddings over in bf16


@dataclass(frozen=True)
class VisionEncoder:
    """A ViT image/video encoder with its patch merger, sizes as in its `vision_config`."""

    name: str
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    patch_size: int
    spatial_merge_size: int
    temporal_patch_size: int
    out_hidden_size: int
    in_channels: int = 3
    gated_mlp: bool = False  # Qwen2.5-VL's SiLU gate·up MLP (three GEMMs instead of two)
    window_size_px: int = 0  # 0: full attention in every block
    fullatt_blocks: tuple[int, ...] = ()  # blocks with full attention when windowed
    deepstack_mergers: int = 0  # Qwen3-VL's extra mergers feeding early LLM layers
    min_pixels: int = 65536
    max_pixels: int = 16777216

    def __post_init__(self) -> None:
        for key in (
            "depth",
            "hidden_size",
            "intermediate_size",
            "num_heads",
            "patch_size",
            "spatial_merge_size",
            "temporal_patch_size",
            "out_hidden_size",
            "in_channels",
        ):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise ServesimError(f"vision_config {key} of {self.name} is {v!r}; it must be ≥ 1.")
        if self.hidden_size % self.num_heads:
            raise ServesimError(
                f"vision_config hidden_size {self.hidden_size} of {self.name} is not a multiple "
                f"of num_heads {self.num_heads}."
            )

    @property
    def factor_px(self) -> int:
        """Pixels per side of one merged token (patch_size × spatial_merge_size)."""
        return self.patch_size * self.spatial_merge_size

    def params(self) -> int:
        """Parameters of the encoder (patch embedding, blocks, mergers; biases and norms)."""
        h, i, m2 = self.hidden_size, self.intermediate_size, self.spatial_merge_size**2
        embed = self.in_channels * self.temporal_patch_size * self.patch_size**2 * h
        mlp = (3 if self.gated_mlp else 2) * h * i + i + h
        block = 3 * h * h + 3 * h + h * h + h + mlp + 4 * h
        merger = m2 * h * m2 * h + m2 * h + m2 * h * self.out_hidden_size + self.out_hidden_size
        return embed + self.depth * block + (1 + self.deepstack_mergers) * (merger + 2 * m2 * h)

    def weight_bytes(self) -> int:
        """Bytes of the encoder's bf16 weights."""
        return self.params() * ACT_BYTES

    def resized(self, width_px: int, height_px: int) -> tuple[int, int]:
        """(width, height) after the processor's smart_resize."""
        f = self.factor_px
        for v, what in ((width_px, "width"), (height_px, "height")):
            if not isinstance(v, int | np.integer) or v < 1:
                raise ServesimError(f"Image {what} {v!r} must be a whole number of pixels ≥ 1.")
        if max(width_px, height_px) / min(width_px, height_px) > 200:
            raise ServesimError(
                f"Image {width_px}x{height_px} has an aspect ratio above 200, which the "
                "Qwen-VL processors refuse."
            )
        h_bar = max(f, round(height_px / f) * f)
        w_bar = max(f, round(width_px / f) * f)
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(height_px * width_px / self.max_pixels)
            h_bar = max(f, math.floor(height_px / beta / f) * f)
            w_bar = max(f, math.floor(width_px / beta / f) * f)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height_px * width_px))
            h_bar = math.ceil(height_px * beta / f) * f
            w_bar = math.ceil(width_px * beta / f) * f
        return int(w_bar), int(h_bar)

    def grid(self, width_px: int, height_px: int, frames: int = 1) -> tuple[int, int, int]:
        """(grid_t, grid_h, grid_w) in patches: an image is one temporal group, a video of n
        frames ceil(n / temporal_patch_size) (the processor pads the last group)."""
        if not isinstance(frames, int | np.integer) or frames < 1:
            raise ServesimError(f"Frames {frames!r} must be a whole number ≥ 1 (1 = an image).")
        w, h = self.resized(width_px, height_px)
        gt = 1 if frames == 1 else -(-int(frames) // self.temporal_patch_size)
        return gt, h // self.patch_size, w // self.patch_size

    def patches(self, width_px: int, height_px: int, frames: int = 1) -> int:
        """Patches the ViT blocks run over."""
        gt, gh, gw = self.grid(width_px, height_px, frames)
        return gt * gh * gw

    def tokens(self, width_px: int, height_px: int, frames: int = 1) -> int:
        """Image tokens (embeddings) the language model prefills, after the spatial merge."""
        return self.patches(width_px, height_px, frames) // self.spatial_merge_size**2

    def attention_seqs(self, width_px: int, height_px: int, frames: int = 1) -> dict[str, Any]:
        """The attention sequences of one image: full-attention length and count, and the
        window lengths' sum and sum of squares of a windowed block (Qwen2.5-VL)."""
        gt, gh, gw = self.grid(width_px, height_px, frames)
        full = {"len": gh * gw, "count": gt}
        if not self.window_size_px:
            return {"full": full, "window_sum": gt * gh * gw, "window_sq": gt * (gh * gw) ** 2}
        m = self.spatial_merge_size
        side = max(1, self.window_size_px // m // self.patch_size)  # merged units per window
        rows = _splits(gh // m, side)
        cols = _splits(gw // m, side)
        # Window of r×c merged units holds r·c·m² patches; Σ over windows of its square.
        sq = (m * m) ** 2 * sum(r * r for r in rows) * sum(c * c for c in cols)
        return {"full": full, "window_sum": gt * gh * gw, "window_sq": gt * sq}

    def flops(self, width_px: int, height_px: int, frames: int = 1) -> float:
        """Floating-point operations of encoding one image (or video), multiply-add = 2."""
        p = self.patches(width_px, height_px, frames)
        h, i = self.hidden_size, self.intermediate_size
        seqs = self.attention_seqs(width_px, height_px, frames)
        full_sq = seqs["full"]["count"] * seqs["full"]["len"] ** 2
        embed = 2.0 * p * self.in_channels * self.temporal_patch_size * self.patch_size**2 * h
        linear = 2.0 * p * (3 * h * h + h * h + (3 if self.gated_mlp else 2) * h * i)
        total = embed + self.depth * linear
        for b in range(self.depth):
            sq = full_sq if self._full(b) else seqs["window_sq"]
            total += 4.0 * h * sq  # QKᵀ and PV over all heads
        m2 = self.spatial_merge_size**2
        t = p // m2
        merger = 2.0 * t * (m2 * h * m2 * h + m2 * h * self.out_hidden_size)
        return total + (1 + self.deepstack_mergers) * merger

    def bytes_moved(self, width_px: int, height_px: int, frames: int = 1) -> float:
        """Bytes one encode reads and writes: weights once, GEMM inputs and outputs in bf16."""
        p = self.patches(width_px, height_px, frames)
        h, i, m2 = self.hidden_size, self.intermediate_size, self.spatial_merge_size**2
        k_embed = self.in_channels * self.temporal_patch_size * self.patch_size**2
        mlp_io = 2 * h + 3 * i if self.gated_mlp else 2 * h + 2 * i
        per_block = p * ((h + 3 * h) + (h + h) + mlp_io + 3 * h)  # + q,k,v read, out written
        t = p // m2
        merger = t * (m2 * h + m2 * h + m2 * h + self.out_hidden_size)
        acts = p * (k_embed + h) + self.depth * per_block + (1 + self.deepstack_mergers) * merger
        return float(self.weight_bytes() + ACT_BYTES * acts)

    def embedding_bytes(self, width_px: int, height_px: int, frames: int = 1) -> float:
        """Bytes of one image's embeddings handed to the language model (EPD's transfer):
        tokens × out_hidden_size × 2, plus the deepstack features of Qwen3-VL."""
        per_token = self.out_hidden_size * ACT_BYTES * (1 + self.deepstack_mergers)
        return float(self.tokens(width_px, height_px, frames) * per_token)

    def _full(self, block: int) -> bool:
        return not self.window_size_px or block in self.fullatt_blocks


def _splits(n: int, side: int) -> list[int]:
    """Sides of the windows tiling n units with windows of `side` (the last one partial)."""
    return [side] * (n // side) + ([n % side] if n % side else [])


def vision_from_config(cfg: dict[str, Any], name: str = "model") -> VisionEncoder:
    """The vision encoder of a Hugging Face VLM config (its `vision_config`); refuses a config
    without one, or one of an encoder family not modelled."""
    vc = cfg.get("vision_config") if isinstance(cfg, dict) else None
    if not isinstance(vc, dict):
        raise ServesimError(
            f"{name} has no vision_config; give a vision-language model (Qwen2.5-VL, Qwen3-VL, "
            "Qwen3.5) to serve images."
        )
    family = str(vc.get("model_type") or cfg.get("model_type") or "")
    if "embed_dim" in vc:  # Qwen2-VL spells the ViT width embed_dim, hidden_size is the LLM's
        vc = dict(vc, hidden_size=vc["embed_dim"], out_hidden_size=vc["hidden_size"])
        vc.setdefault("intermediate_size", int(vc["embed_dim"] * vc.get("mlp_ratio", 4)))
    missing = [
        k
        for k in ("depth", "hidden_size", "intermediate_size", "num_heads", "patch_size")
        if k not in vc
    ]
    if missing:
        raise ServesimError(f"vision_config of {name} lacks {', '.join(missing)}.")
    windowed = family.startswith("qwen2_5") or "fullatt_block_indexes" in vc
    lo, hi = _PIXELS["qwen2_5_vl" if family.startswith("qwen2") else "qwen3_vl"]
    try:
        return VisionEncoder(
            name=name,
            depth=int(vc["depth"]),
            hidden_size=int(vc["hidden_size"]),
            intermediate_size=int(vc["intermediate_size"]),
            num_heads=int(vc["num_heads"]),
            patch_size=int(vc["patch_size"]),
            spatial_merge_size=int(vc.get("spatial_merge_size", 2)),
            temporal_patch_size=int(vc.get("temporal_patch_size", 2)),
            out_hidden_size=int(vc.get("out_hidden_size", vc["hidden_size"])),
            in_channels=int(vc.get("in_channels", vc.get("in_chans", 3))),
            gated_mlp=family.startswith("qwen2_5"),
            window_size_px=int(vc.get("window_size", 0)) if windowed else 0,
            fullatt_blocks=tuple(int(b) for b in vc.get("fullatt_block_indexes", ())),
            deepstack_mergers=len(vc.get("deepstack_visual_indexes") or ()),
            min_pixels=lo,
            max_pixels=hi,
        )
    except (TypeError, ValueError) as exc:
        raise ServesimError(f"vision_config of {name} has a size that is not a number.") from exc


def load_vision(name_or_path: str) -> VisionEncoder:
    """The vision encoder of a bundled model name or a config.json path (as `load_model`)."""
    from servesim.spec import model as model_spec

    p = model_spec.config_path(name_or_path)
    if p is not None:
        return vision_from_config(model_spec._read_json(p, "Model config"), p.stem)
    cfg, hf_id = model_spec.bundled_config(name_or_path)
    return vision_from_config(cfg, hf_id)


@dataclass(eq=False)
class Images:
    """Images attached to each request of a workload: a count and one size per request
    (every image of a request has that size), and frames per image (1 = a still image).
    Sizes of 0 mean not given yet (a trace's counts, until `multimodal.size_images`)."""

    count: np.ndarray
    width_px: np.ndarray
    height_px: np.ndarray
    frames: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.count = np.asarray(self.count, dtype=np.int64).reshape(-1)
        n = len(self.count)
        self.width_px = _per_request(self.width_px, n, "image width")
        self.height_px = _per_request(self.height_px, n, "image height")
        frames = self.frames if len(np.atleast_1d(self.frames)) else 1
        self.frames = _per_request(frames, n, "frames per image")
        if n and self.count.min() < 0:
            raise ServesimError("A request has a negative image count; use 0 or more.")
        has = self.count > 0
        if self.sized:
            for arr, what in ((self.width_px, "width"), (self.height_px, "height")):
                if has.any() and arr[has].min() < 1:
                    raise ServesimError(f"A request with images has image {what} < 1 pixel.")
        if n and self.frames.min() < 1:
            raise ServesimError("Frames per image must be ≥ 1 (1 = a still image).")

    @classmethod
    def unsized(cls, count: np.ndarray) -> Images:
        """Image counts whose size is not known yet (a trace's `images` column)."""
        return cls(count, 0, 0)

    @property
    def sized(self) -> bool:
        """Whether the images have sizes (and their tokens are in the prompts)."""
        return not (len(self.count) and self.width_px.max() == 0 and self.height_px.max() == 0)

    def __len__(self) -> int:
        return len(self.count)

    def take(self, idx: Any) -> Images:
        """The images of the requests at `idx`."""
        return Images(self.count[idx], self.width_px[idx], self.height_px[idx], self.frames[idx])

    def tokens_per_request(self, enc: VisionEncoder) -> np.ndarray:
        """Image tokens each request adds to its prompt (count × tokens of its image size)."""
        return self.count * self.per_image(enc, enc.tokens).astype(np.int64)

    def per_image(self, enc: VisionEncoder, fn: Any) -> np.ndarray:
        """fn(width, height, frames) of each request's image size (0 where it has none)."""
        if not self.sized:
            raise ServesimError(
                "The workload's images have no size; give one (--image-size WxH, or "
                "multimodal.size_images)."
            )
        memo: dict[tuple[int, int, int], float] = {}
        out = np.zeros(len(self), dtype=np.float64)
        for i in np.flatnonzero(self.count > 0):
            key = (int(self.width_px[i]), int(self.height_px[i]), int(self.frames[i]))
            if key not in memo:
                memo[key] = fn(*key)
            out[i] = memo[key]
        return out


def _per_request(x: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.int64).reshape(-1)
    if len(arr) == 1 and n != 1:
        arr = np.full(n, int(arr[0]), dtype=np.int64)
    if len(arr) != n:
        raise ServesimError(f"Give one {what} per request ({n}), not {len(arr)}.")
    return arr


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' → (1024, 768): width × height in pixels."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise ServesimError(
            f"Image size {text!r} is not WIDTHxHEIGHT in pixels; use e.g. 1024x1024."
        ) from None
    if w < 1 or h < 1:
        raise ServesimError(f"Image size {text!r} must be at least 1x1 pixels.")
    return w, h
