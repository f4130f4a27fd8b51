"""The model zoo: makemore's lineage of character-level language models, one module each.

bigram (models/bigram.py) -> MLP (Bengio et al. 2003) -> WaveNet CNN (van den Oord et al. 2016)
-> RNN (Elman 1990) -> LSTM (Hochreiter & Schmidhuber 1997) -> GRU (Cho et al. 2014) -> GPT.
All share the GPT's interface: ``forward(idx, targets=None, loss_mask=None) -> (logits, loss)``,
``generate``, and every position predicted from earlier positions only; ``quill train --arch
lstm`` trains one, ``quill zoo`` races them all (models/zoo/cli.py).
"""

from __future__ import annotations

from quillgpt.models.base import LanguageModel
from quillgpt.models.zoo.cnn import WaveNetLanguageModel
from quillgpt.models.zoo.gru import GRULanguageModel
from quillgpt.models.zoo.lstm import LSTMLanguageModel
from quillgpt.models.zoo.mlp import MLPLanguageModel
from quillgpt.models.zoo.rnn import RNNLanguageModel

ZOO: dict[str, type[LanguageModel]] = {
    "mlp": MLPLanguageModel,
    "cnn": WaveNetLanguageModel,
    "rnn": RNNLanguageModel,
    "lstm": LSTMLanguageModel,
    "gru": GRULanguageModel,
}

__all__ = ["ZOO", "GRULanguageModel", "LSTMLanguageModel", "MLPLanguageModel", "RNNLanguageModel",
           "WaveNetLanguageModel"]
