"""Labelled text from machine-learning dataset libraries, read from local disk only.

`hf:DIR` is a directory written by `datasets`' `save_to_disk` (or a directory of data files); `hf:NAME` is loaded
with `load_dataset` from the local Hugging Face cache with the hub switched off. `tfds:DIR` is a
`tensorflow-datasets` dataset prepared on disk as array_record, read as a random-access data source, which needs
no TensorFlow.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from tljax.data.dataset import SPLIT_ALIASES, DataError, TextDataset, check_texts, columns_of, encode_labels


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face libraries read their offline flag at import; set it for this call only, then restore it."""
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _from_parts(name: str, parts: dict[str, tuple[list, list]], label_names: Sequence[str] | None,
                labels: Sequence[object] | None, language: str, split: str | None) -> TextDataset:
    """One dataset from {split name: (texts, label values)}; a predefined split when the names allow it."""
    if split is None and len(parts) > 1:
        unknown = [p for p in parts if p not in SPLIT_ALIASES]
        if unknown:
            raise DataError(f"{name} has the splits {list(parts)}; choose one with split= (only train / validation"
                            " / test splits are combined into one dataset with its predefined split)")
    texts, values, predefined = [], [], []
    for part, (part_texts, part_values) in parts.items():
        texts += part_texts
        values += part_values
        predefined += [SPLIT_ALIASES.get(part, "train")] * len(part_texts)
    texts = check_texts(texts, name)
    if label_names is not None:  # class-label features: the values are already indices
        indices, names = tuple(int(v) for v in values), tuple(label_names)
    else:
        indices, names = encode_labels(values, labels, name)
    keep_split = split is None and len(parts) > 1
    return TextDataset(name, texts, indices, names, predefined_split=tuple(predefined) if keep_split else None,
                       language=language)


def load_hf(spec: str, *, text_column: str, label_column: str, labels: Sequence[object] | None,
            split: str | None) -> TextDataset:
    """`hf:DIR` (save_to_disk output, or a directory of data files) or `hf:NAME` from the local cache only."""
    import datasets

    path = Path(spec).expanduser()
    where = f"hf:{spec}"
    with _hub_offline():
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
                if split is not None and isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise DataError(f"{where} has no split {split!r}; its splits are {list(loaded)}")
                    loaded = loaded[split]
            else:
                loaded = datasets.load_dataset(str(path) if path.exists() else spec, split=split)
        except DataError:
            raise
        except ValueError as error:  # e.g. an unknown split name
            raise DataError(f"{where} could not be read as asked: {error}") from None
        except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
            raise DataError(f"{where} is neither a local dataset directory nor in the local Hugging Face cache "
                            f"(nothing is downloaded from the hub): {error}") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {split or "train": loaded}
    first = next(iter(parts.values()))
    columns = list(first.column_names)
    columns_of([], columns, {"text": text_column, "label": label_column}, where)
    feature = first.features[label_column]
    names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    rows = {part: (list(ds[text_column]), list(ds[label_column])) for part, ds in parts.items()}
    return _from_parts(path.name or spec, rows, names, labels, "und", split)


def _is_prepared(directory: Path) -> bool:
    # `datasets`' save_to_disk writes a dataset_info.json too; a TFDS directory also holds its record shards.
    return (directory / "dataset_info.json").is_file() and any(
        ".array_record-" in p.name or ".tfrecord-" in p.name for p in directory.iterdir())


def _tfds_directory(root: Path) -> Path:
    """The prepared dataset directory: `root` itself, or its only dataset (latest version) one or two levels below."""
    candidates = [root, *root.glob("*"), *root.glob("*/*")] if root.is_dir() else []
    found = sorted(p for p in candidates if p.is_dir() and _is_prepared(p))
    by_dataset: dict[Path, list[Path]] = {}
    for directory in found:
        by_dataset.setdefault(directory.parent, []).append(directory)
    if len(by_dataset) != 1:
        what = "no prepared dataset" if not found else f"several datasets ({', '.join(map(str, found))})"
        raise DataError(f"tfds:{root} holds {what}; give the directory of one dataset prepared by "
                        "download_and_prepare (DATA_DIR/NAME/VERSION, with dataset_info.json and record files)")
    versions = next(iter(by_dataset.values()))
    return max(versions, key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")))


def _plain(value: object) -> object:
    """A record's value as Python: text features arrive as UTF-8 bytes, numbers as numpy scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def load_tfds(spec: str, *, text_column: str, label_column: str, labels: Sequence[object] | None,
              split: str | None) -> TextDataset:
    """A `tensorflow-datasets` dataset prepared on disk, read as a random-access data source (no TensorFlow)."""
    import tensorflow_datasets as tfds

    where = f"tfds:{spec}"
    directory = _tfds_directory(Path(spec).expanduser())
    try:
        builder = tfds.builder_from_directory(str(directory))
    except Exception as error:  # noqa: BLE001 - any failure here means an unreadable dataset_info.json
        raise DataError(f"{where}: {directory} is not a readable prepared dataset ({error})") from None
    features, available = builder.info.features, list(builder.info.splits.keys())
    columns_of([], list(features.keys()), {"text": text_column, "label": label_column}, where)
    parts = {}
    for part in [split] if split is not None else available:
        try:
            source = builder.as_data_source(part)
        except Exception as error:  # noqa: BLE001 - an unknown split, or shards that are not array_record
            raise DataError(f"{where} cannot serve split {part!r} as a data source: {error} (its splits are "
                            f"{available}; tfds data sources need the array_record file format)") from None
        records = [source[i] for i in range(len(source))]
        parts[part] = ([_plain(r[text_column]) for r in records], [_plain(r[label_column]) for r in records])
    feature = features[label_column]
    names = list(feature.names) if isinstance(feature, tfds.features.ClassLabel) else None
    return _from_parts(builder.info.name, parts, names, labels, "und", split)
