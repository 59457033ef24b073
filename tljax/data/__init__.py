"""Labelled text: sources (packaged corpora, files, `datasets`, `tensorflow-datasets`) and leak-free splits.

```python
from tljax.data import load_source, split_dataset, describe_splits

dataset = load_source("rotten-tomatoes")          # or "reviews.csv", "hf:DIR", "tfds:DIR"
splits = split_dataset(dataset, validation=0.1, test=0.1, seed=0)
print(describe_splits(splits))
```

`python -m tljax.data list` shows the packaged corpora. (`tljax.data.batches` turns tokenised text into batches.)
"""

from __future__ import annotations

from tljax.data.dataset import DataError, TextDataset, encode_labels
from tljax.data.packaged import PACKAGED_CORPORA, PackagedCorpus, load_packaged
from tljax.data.sources import load_source
from tljax.data.splits import Splits, describe_splits, normalise, split_dataset

__all__ = ["PACKAGED_CORPORA", "DataError", "PackagedCorpus", "Splits", "TextDataset", "describe_splits",
           "encode_labels", "load_packaged", "load_source", "normalise", "split_dataset"]
