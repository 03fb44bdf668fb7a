"""Readers for real multi-label data sets in Mulan format (an ARFF file plus an XML file naming the labels).

Mulan's ARFF files come dense (comma-separated values) or sparse (``{index value, ...}``, absent values are 0);
``scipy.io.arff`` does not read the sparse form, so this is a small reader of its own. Nothing is downloaded:
point it at a folder you have, e.g. one of Mulan's ``data/multi-label/<name>`` folders.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MultiLabelData", "read_mulan"]

_ATTRIBUTE = re.compile(r"^@attribute\s+('(?:[^']|\\')*'|\"[^\"]*\"|\S+)\s+(.+)$", re.IGNORECASE)


@dataclass(frozen=True)
class MultiLabelData:
    """Features ``x`` (n, d) float32, multi-hot targets ``y`` (n, m) uint8, and their names."""

    x: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...]
    label_names: tuple[str, ...]


def _unquote(name: str) -> str:
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return name[1:-1].replace("\\'", "'")
    return name


def _labels_from_xml(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    return [el.attrib["name"] for el in root.iter() if el.tag.split("}")[-1] == "label" and "name" in el.attrib]


def read_mulan(folder: str | Path, split: str = "train") -> MultiLabelData:
    """Read ``<folder>/<name>-<split>.arff`` with the label names of ``<folder>/<name>.xml``.

    Args:
        folder: the data set's folder (its name is the data set's name, e.g. ``.../mulan/delicious``).
        split: ``"train"`` or ``"test"``.

    Returns:
        A :class:`MultiLabelData`; labels are the attributes named in the XML file, features all the others.

    Raises:
        FileNotFoundError: if the ARFF or XML file is missing.
        ValueError: if a data row cannot be parsed.
    """
    root = Path(folder)
    name = root.name
    arff = root / f"{name}-{split}.arff"
    xml = root / f"{name}.xml"
    for path in (arff, xml):
        if not path.exists():
            raise FileNotFoundError(f"Expected the Mulan file {path}, but it does not exist.")
    label_set = set(_labels_from_xml(xml))
    names: list[str] = []
    rows: list[list[tuple[int, float]]] = []
    in_data = False
    with open(arff, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                match = _ATTRIBUTE.match(line)
                if match:
                    names.append(_unquote(match.group(1)))
                elif line.lower().startswith("@data"):
                    in_data = True
                continue
            try:
                if line.startswith("{"):
                    body = line.strip("{}").strip()
                    pairs = [item.split() for item in body.split(",") if item.strip()]
                    rows.append([(int(i), float(v)) for i, v in pairs])
                else:
                    rows.append([(j, float(v)) for j, v in enumerate(line.split(",")) if v not in ("0", "?")])
            except ValueError as err:
                raise ValueError(f"Cannot parse data row at {arff}:{lineno}: {err}") from err
    is_label = np.array([n in label_set for n in names])
    if not is_label.any():
        raise ValueError(f"None of the labels named in {xml} is an attribute of {arff}.")
    dense = np.zeros((len(rows), len(names)), dtype=np.float32)
    for r, row in enumerate(rows):
        for j, v in row:
            dense[r, j] = v
    return MultiLabelData(
        x=dense[:, ~is_label],
        y=(dense[:, is_label] > 0).astype(np.uint8),
        feature_names=tuple(n for n, lab in zip(names, is_label) if not lab),
        label_names=tuple(n for n, lab in zip(names, is_label) if lab),
    )
