"""How one replica spreads a model over devices: tensor, pipeline, expert, attention-DP."""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError


@dataclass(frozen=True)
class Parallel:
    """Parallel layout of one replica.

    `tp` splits every attention layer's matrices and heads; `pp` splits the layers into
    stages; `dp` runs that many attention data-parallel ranks (each with its own scheduler,
    batch share and KV cache) that meet in the expert layers. The routed experts are spread
    over all tp × dp devices of a stage as `ep` groups of `moe_tp` devices each
    (moe_tp × ep = tp × dp): each group holds experts/ep experts, each split over its moe_tp
    devices. `moe_tp_size` 0 derives moe_tp = tp × dp / ep, the layout vLLM, SGLang and
    TRT-LLM all use (vLLM docs, "Data Parallel Deployment": the expert layers form a DP × TP
    group; SGLang `--enable-dp-attention` with `--tp N --dp N`: MoE over the N GPUs;
    TRT-LLM `moe_tp_size × moe_ep_size = tp_size`). The dense FFN layers and shared experts
    are split over `dense_tp` devices: `tp` (the default: replicated on every DP rank, as
    TRT-LLM's attention DP does, `overridden_tp_size=1 if enable_attention_dp` in its
    models/modeling_*.py) or tp × dp (SGLang's default `moe_dense_tp_size=None`: the dense
    MLP tensor-parallel over the whole group). Devices per replica = tp × pp × dp.

    `dp_dispatch` is how requests reach the DP ranks: `balanced` keeps their counts even
    (SGLang's default round-robin, TRT-LLM's attention-DP balancer), `random` sends each to a
    uniformly random rank (SGLang prefill workers in PD disaggregation route by
    `bootstrap_room % dp`, the room a random 63-bit number:
    managers/data_parallel_controller.py `follow_bootstrap_room_scheduler`, the default
    there in server_args.py `_handle_load_balance_method`).
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp: int = 1
    moe_tp_size: int = 0  # 0: tp × dp / ep
    dense_tp_size: int = 0  # 0: tp
    dp_dispatch: str = "balanced"  # or "random"

    def __post_init__(self) -> None:
        for field_name in ("tp", "pp", "ep", "dp"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ServesimError(
                    f"Parallel degree {field_name} must be an integer ≥ 1, got {value!r}."
                )
        for field_name in ("moe_tp_size", "dense_tp_size"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 0:
                raise ServesimError(
                    f"Parallel size {field_name} must be an integer ≥ 0 (0 = derived), "
                    f"got {value!r}."
                )
        if self.dp_dispatch not in ("balanced", "random"):
            raise ServesimError(
                f"dp_dispatch must be 'balanced' or 'random', got {self.dp_dispatch!r}."
            )
        group = self.tp * self.dp
        if self.ep > 1 and group % self.ep:
            raise ServesimError(
                f"Expert parallelism ep={self.ep} must divide tp×dp={group} (the "
                "devices of one pipeline stage share the experts); pick a divisor or 1."
            )
        if self.moe_tp_size and self.moe_tp_size * self.ep != group:
            raise ServesimError(
                f"moe_tp={self.moe_tp_size} × ep={self.ep} must equal tp×dp={group}: the "
                "expert layers use every device of a pipeline stage."
            )
        if self.dense_tp_size and self.dense_tp_size not in (self.tp, group):
            raise ServesimError(
                f"dense_tp={self.dense_tp_size} must be tp={self.tp} (dense layers replicated "
                f"on each attention-DP rank) or tp×dp={group} (split over the whole stage)."
            )

    @property
    def moe_tp(self) -> int:
        """Devices each routed expert is split over: tp × dp / ep."""
        return self.moe_tp_size or self.tp * self.dp // self.ep

    @property
    def dense_tp(self) -> int:
        """Devices the dense FFN layers and shared experts are split over (tp or tp × dp)."""
        return self.dense_tp_size or self.tp

    @property
    def shared_tp(self) -> int:
        """Devices the shared experts are split over: with the experts in tensor parallel over
        the DP ranks (ep 1) they ride along on the gathered tokens (`dense_tp`); with EP's
        all-to-all (SGLang DeepEP, TRT-LLM) each rank runs them on its own tokens (`tp`)."""
        return self.dense_tp if self.ep == 1 else self.tp

    @property
    def num_devices(self) -> int:
        """Devices one replica occupies."""
        return self.tp * self.pp * self.dp

    def label(self) -> str:
        """Short tag such as `tp4` or `tp2pp2ep4dp2`."""
        parts = [f"tp{self.tp}"]
        if self.pp > 1:
            parts.append(f"pp{self.pp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        if self.dp > 1:
            parts.append(f"dp{self.dp}")
            if self.dense_tp > self.tp:
                parts.append("densetp")
        return "".join(parts)
