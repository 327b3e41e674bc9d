"""The studio's palette: one exact colour per label id, and colour pictures back to label ids.

The canvas holds a label map as colours. Every label id the model knows (the classes, and
"don't care" where the dataset has it) gets the dataset's display colour
(:func:`dagan.data.classes.colorize`'s table). Where the dataset gives two ids the same colour
(Cityscapes paints unlabeled, ego vehicle, rectification border, out of roi and static black;
polegroup as pole; license plate as car) the later id gets the first colour of
:func:`dagan.data.classes.palette` that no id uses, so that a colour always means one id.

Reading a picture back (:meth:`Palette.read`): a pixel whose colour is an id's colour is that id.
A browser may draw a brush's edge antialiased, a band of pixels in colours between the stroke's
and what lay under it. Matching such a colour to the nearest class colour would invent a third
class wherever one happens to lie between the two (between road and sky, say), so each of them
takes the id of the nearest exactly coloured pixel instead: up to ``edge_band`` pixels away, the
nearer pixels first. A region of unknown colour wider than that (a picture painted in other
colours, a half-transparent brush) is refused with the colour and where it is. Uploads are read
with ``edge_band=0``: every pixel must be exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dagan.data.classes import palette
from dagan.inference import InputError, LabelLayout

DONT_CARE_NAME = "don't care"
EDGE_BAND = 2  # pixels: the widest antialiased brush edge the canvas reader repairs
# The 8 neighbours in the order an edge pixel looks at them: the 4 sides first, then the corners.
NEIGHBOURS = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class Palette:
    names: tuple[str, ...]  # per label id
    colors: tuple[tuple[int, int, int], ...]  # per label id, all different

    @classmethod
    def from_layout(cls, layout: LabelLayout) -> Palette:
        names = list(layout.class_names[: layout.num_classes])
        names += [f"class {index}" for index in range(len(names), layout.num_classes)]
        wanted = [_rgb(color) for color in layout.class_colors[: layout.num_classes]]
        if layout.contain_dontcare_label:
            names.append(DONT_CARE_NAME)
        spare = iter(_rgb(color) for color in palette(4 * layout.num_label_channels + 8))
        colors: list[tuple[int, int, int]] = []
        for index in range(layout.num_label_channels):
            color = wanted[index] if index < len(wanted) else next(spare)
            while color in colors:
                color = next(spare)
            colors.append(color)
        return cls(tuple(names), tuple(colors))

    def __len__(self) -> int:
        return len(self.colors)

    def hex(self, label_id: int) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colors[label_id])

    def paint(self, label: np.ndarray) -> np.ndarray:
        """(H, W) label ids -> (H, W, 3) uint8 colours."""
        return np.asarray(self.colors, dtype=np.uint8)[label]

    def read(self, rgb: np.ndarray, what: str, edge_band: int = EDGE_BAND, alpha: np.ndarray | None = None
             ) -> np.ndarray:
        """(H, W, 3) uint8 colours -> (H, W) int64 ids by the module's rules, or an InputError naming
        ``what``, the unknown colour, its pixel count and where it is. ``alpha`` (H, W): pixels below
        full opacity are unpainted (unknown)."""
        codes = _codes(rgb)
        table = _codes(np.asarray(self.colors, dtype=np.uint8)[None])[0]
        order = np.argsort(table)
        position = np.searchsorted(table[order], codes).clip(max=len(table) - 1)
        exact = table[order][position] == codes
        if alpha is not None:
            exact &= alpha == 255
        label = np.where(exact, order[position], -1).astype(np.int64)
        known = exact
        for _ in range(edge_band):
            if known.all():
                break
            label, known = _grow(label, known)
        if not known.all():
            raise InputError(self._unknown(rgb, ~exact, what, alpha, edge_band))
        return label

    def _unknown(self, rgb: np.ndarray, unknown: np.ndarray, what: str, alpha: np.ndarray | None,
                 edge_band: int) -> str:
        """The message for a picture with ``unknown`` pixels (all of them, repaired edges included)."""
        rows, cols = np.nonzero(unknown)
        row, col = int(rows[0]), int(cols[0])
        count = int(unknown.sum())
        if alpha is not None and alpha[row, col] < 255:
            return (f"{what}: {count} pixels are transparent (first at x={col}, y={row}); every pixel needs a "
                    "class: fill the canvas with a class or start from a layout")
        values, counts = np.unique(rgb[unknown].reshape(-1, 3), axis=0, return_counts=True)
        common = ", ".join(f"rgb{tuple(int(v) for v in values[i])} x{counts[i]}" for i in np.argsort(-counts)[:3])
        band = (f" (brush edges up to {edge_band} px wide are repaired)" if edge_band else
                "; every pixel must have exactly a class's colour")
        return (f"{what}: {count} pixels have colours of no class, e.g. {common}, the first at x={col}, y={row}"
                f"{band}; paint with the palette's colours, or upload a label-id PNG")


def _rgb(color: list[int]) -> tuple[int, int, int]:
    red, green, blue = (int(value) for value in color)
    return red, green, blue


def _codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int64 with one value per colour."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _grow(label: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of edge repair: each unknown pixel next to a known one takes that neighbour's id."""
    height, width = label.shape
    padded = np.pad(label, 1, constant_values=-1)
    padded_known = np.pad(known, 1, constant_values=False)
    grown, now_known = label.copy(), known.copy()
    for d_row, d_col in NEIGHBOURS:
        window = (slice(1 + d_row, 1 + d_row + height), slice(1 + d_col, 1 + d_col + width))
        take = ~now_known & padded_known[window]
        grown[take] = padded[window][take]
        now_known |= take
    return grown, now_known
