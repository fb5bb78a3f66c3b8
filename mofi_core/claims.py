"""The paper's directions as checkable claims over one evaluation (``metrics/evaluate.json``).

MOFI (ICLR 2024) claims: supervised pre-training on I2E beats CLIP on the raw alt-text for
image retrieval, multi-task training improves on supervised, and the final (multi-task) model
beats the control on zero-shot and linear-probe classification too; for contrastive training,
entity descriptions help. Each claim compares one metric of two models; a claim whose models or
metric an evaluation lacks is not applicable there (not held, not failed). The report prints
one run's verdicts; ``make paper`` counts, over seeds, how many agree.

This module imports nothing from the project but the recipe table.
"""

from __future__ import annotations

from dataclasses import dataclass

from mofi_core.recipes import (
    COMPUTE_CONTROL_MODEL,
    CONTROL_MODEL,
    NAME_ONLY_MODEL,
    PAPER_MODEL,
)


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    metric: str
    better: str  # the model the paper says is ahead
    worse: str
    strict: bool = True  # ">" (else ">=")

    def verdict(self, evaluation: dict) -> tuple[float, float, bool] | None:
        """``(better's value, worse's value, held)``, or None when not applicable."""
        a, b = evaluation.get(self.better), evaluation.get(self.worse)
        if not isinstance(a, dict) or not isinstance(b, dict) \
                or self.metric not in a or self.metric not in b:
            return None
        x, y = float(a[self.metric]), float(b[self.metric])
        return x, y, (x > y if self.strict else x >= y)


CLAIMS: tuple[Claim, ...] = (
    Claim("supervised_beats_control_retrieval",
          "supervised on I2E beats the alt-text CLIP on retrieval mAP",
          "gpr_map", "supervised", CONTROL_MODEL),
    Claim("multitask_ge_supervised_retrieval",
          "multi-task is at least as good as supervised on retrieval mAP",
          "gpr_map", PAPER_MODEL, "supervised", strict=False),
    Claim("mofi_beats_control_retrieval", "MOFI beats the alt-text CLIP on retrieval mAP",
          "gpr_map", PAPER_MODEL, CONTROL_MODEL),
    Claim("mofi_beats_control_zero_shot", "MOFI beats the alt-text CLIP on zero-shot top-1",
          "zero_shot_top1", PAPER_MODEL, CONTROL_MODEL),
    Claim("mofi_beats_control_linear_probe",
          "MOFI beats the alt-text CLIP on linear-probe top-1",
          "probe_top1", PAPER_MODEL, CONTROL_MODEL),
    Claim("contrastive_beats_control_retrieval",
          "contrastive on entity texts beats the alt-text CLIP on retrieval mAP",
          "gpr_map", "contrastive", CONTROL_MODEL),
    # make paper only (the models exist there): the description ablation and the control at
    # the MOFI line's total compute
    Claim("descriptions_help_contrastive_retrieval",
          "entity descriptions help contrastive training (retrieval mAP vs names only)",
          "gpr_map", "contrastive", NAME_ONLY_MODEL),
    Claim("descriptions_help_contrastive_zero_shot",
          "entity descriptions help contrastive training (zero-shot top-1 vs names only)",
          "zero_shot_top1", "contrastive", NAME_ONLY_MODEL),
    Claim("mofi_beats_compute_control_retrieval",
          "MOFI beats the alt-text CLIP trained for the same total compute on retrieval mAP",
          "gpr_map", PAPER_MODEL, COMPUTE_CONTROL_MODEL),
    Claim("mofi_beats_compute_control_zero_shot",
          "MOFI beats the same-total-compute CLIP on zero-shot top-1",
          "zero_shot_top1", PAPER_MODEL, COMPUTE_CONTROL_MODEL),
    Claim("mofi_beats_compute_control_linear_probe",
          "MOFI beats the same-total-compute CLIP on linear-probe top-1",
          "probe_top1", PAPER_MODEL, COMPUTE_CONTROL_MODEL),
)


def model_rows(evaluation: dict) -> dict[str, dict]:
    """The per-model blocks of an evaluation (not the benchmark, the ratios or the notes)."""
    return {k: v for k, v in evaluation.items()
            if isinstance(v, dict) and k != "benchmark" and "_vs_" not in k}


def verdicts(evaluation: dict) -> list[tuple[Claim, float, float, bool]]:
    """Every applicable claim with both numbers and whether it held on ``evaluation``."""
    out = []
    for claim in CLAIMS:
        v = claim.verdict(evaluation)
        if v is not None:
            out.append((claim, *v))
    return out
