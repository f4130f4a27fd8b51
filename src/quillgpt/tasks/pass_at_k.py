"""pass@k: how often at least one of k sampled answers is right, the headroom RL can sharpen into.

Each question is sampled n times and c of the samples are right. Taking the first k samples only
(``max`` over k columns) is a noisy estimate; Chen et al. 2021 ("Evaluating Large Language Models
Trained on Code", eq. 1) give the unbiased one from all n:

    pass@k = 1 - C(n - c, k) / C(n, k)

the chance that a random k-subset of the n samples holds at least one right answer, averaged over
questions. Yue et al. 2025 use it to show RL with verifiable rewards mostly sharpens what the start
model can already sample: pass@k of the start model is RL's ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one question with ``c`` right answers among ``n`` samples (k <= n).

    C(n-c, k) / C(n, k) equals prod_{j=n-c+1}^{n} (1 - k/j), which never forms the (huge) binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a right answer
        return 1.0
    miss = 1.0
    for j in range(n - c + 1, n + 1):
        miss *= 1.0 - k / j
    return 1.0 - miss


def report_ks(samples: int) -> list[int]:
    """The k to report for ``samples`` samples a question: 1, 2, 4, 8, ... and ``samples`` itself."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


@dataclass
class PassAtK:
    """Right answers out of ``samples`` per question (``correct[i]`` for question i)."""

    correct: list[int]
    samples: int
    temperature: float

    def value(self, k: int) -> float:
        return sum(pass_at_k(self.samples, c, k) for c in self.correct) / len(self.correct)

    @property
    def never_solved(self) -> int:
        return sum(c == 0 for c in self.correct)

    def to_dict(self) -> dict[str, object]:
        return {"samples": self.samples, "temperature": self.temperature, "questions": len(self.correct),
                "pass_at_k": {str(k): self.value(k) for k in report_ks(self.samples)},
                "never_solved": self.never_solved}

    def format(self) -> str:
        cells = ", ".join(f"pass@{k} {100 * self.value(k):.1f}%" for k in report_ks(self.samples))
        return (f"  {self.samples} samples a question at temperature {self.temperature:g} (unbiased estimator, "
                f"Chen et al. 2021): {cells}; never solved: {self.never_solved} of {len(self.correct)}")
