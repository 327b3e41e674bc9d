"""Per-class style editing with a style-encoding generator (CA2SIS: global and local style transfer).

A scene's style is one code per class (:mod:`dagan.ca2sis`). A :class:`StyleEdit` holds the codes
of a reference photo (encoded with the reference's own label map) and puts them in place of the
scene's codes for chosen classes: every class of the reference (global transfer), or a list such
as only the sky (local transfer). The scene keeps its other classes' styles: those of its own photo
(``generate --photos``) or the class means learned in training.

    python -m dagan generate --model CKPT --labels DIR --out DIR --photos DIR \\
        --style-image ref.jpg --style-label ref.png --style-classes sky,3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dagan.inference import InputError, Synthesizer, decode_id_map, read_photo


@dataclass(frozen=True)
class StyleEdit:
    codes: torch.Tensor  # (1, C, D): the reference's per-class codes
    classes: tuple[int, ...]  # the classes that take the reference's style

    def apply(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` (B, C, D) with the chosen classes' codes replaced by the reference's."""
        edited = codes.clone()
        edited[:, list(self.classes)] = self.codes[:, list(self.classes)].to(edited.dtype)
        return edited


def parse_classes(text: str, class_names: list[str], num_label_channels: int) -> tuple[int, ...]:
    """``"sky,3"`` -> class ids; names are the manifest's class names."""
    ids = []
    for item in (part.strip() for part in text.split(",")):
        if item.isdigit() and int(item) < num_label_channels:
            ids.append(int(item))
        elif item in class_names:
            ids.append(class_names.index(item))
        else:
            raise InputError(f"--style-classes: {item!r} is neither a class id 0..{num_label_channels - 1} nor a "
                             f"class name ({', '.join(class_names)})")
    return tuple(dict.fromkeys(ids))


def style_edit(synthesizer: Synthesizer, photo_path: str | Path, label_path: str | Path,
               classes: str | None = None) -> StyleEdit:
    """The reference photo's codes for ``classes`` (default: every class in its label map)."""
    label = decode_id_map(Path(label_path).read_bytes(), str(label_path))
    codes = synthesizer.style_codes(label, read_photo(photo_path), what=str(photo_path))
    present = sorted(int(value) for value in np.unique(label))
    layout = synthesizer.layout
    chosen = parse_classes(classes, layout.class_names, layout.num_label_channels) if classes else tuple(present)
    missing = [c for c in chosen if c not in present]
    if missing:
        names = ", ".join(layout.class_names[c] if c < len(layout.class_names) else str(c) for c in missing)
        raise InputError(f"{label_path}: the reference has no pixels of {names}, so it has no style for them; "
                         "choose classes it shows (--style-classes) or another reference")
    return StyleEdit(codes, chosen)
