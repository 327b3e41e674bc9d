"""Class names and display colours of each dataset's label ids (after remapping).

Names follow each dataset's own documentation: Cityscapes ``labelIds`` (ids 0..33 plus
license plate as 34, the 35 labels SPADE/DAGAN train on), ADE20K SceneParsing (150 classes,
id k = annotation value k + 1), CelebAMask-HQ (background + 18 face parts, in the order the
dataset's mask-combination script paints them), CMP Facades (annotation values 1..12; 0 is
unused), COCO-Stuff (182 ids: 91 thing ids, some unused, then 91 stuff classes) and DeepFashion
as the DAGAN authors prepared it (20 human-parsing ids whose names are not published with it:
"part 0" .. "part 19"). Colours
are only for visualising label maps (:func:`colorize`, the one place that paints them): Cityscapes
uses its published colours, every other dataset a generated :func:`palette`.
"""

from __future__ import annotations

import numpy as np

CITYSCAPES: list[tuple[str, tuple[int, int, int]]] = [
    ("unlabeled", (0, 0, 0)), ("ego vehicle", (0, 0, 0)), ("rectification border", (0, 0, 0)),
    ("out of roi", (0, 0, 0)), ("static", (0, 0, 0)), ("dynamic", (111, 74, 0)), ("ground", (81, 0, 81)),
    ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)), ("parking", (250, 170, 160)),
    ("rail track", (230, 150, 140)), ("building", (70, 70, 70)), ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)), ("guard rail", (180, 165, 180)), ("bridge", (150, 100, 100)),
    ("tunnel", (150, 120, 90)), ("pole", (153, 153, 153)), ("polegroup", (153, 153, 153)),
    ("traffic light", (250, 170, 30)), ("traffic sign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)), ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)), ("caravan", (0, 0, 90)),
    ("trailer", (0, 0, 110)), ("train", (0, 80, 100)), ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)),
    ("license plate", (0, 0, 142)),
]

ADE20K = (
    "wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk, person, earth, "
    "door, table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf, house, sea, mirror, rug, "
    "field, armchair, seat, fence, desk, rock, wardrobe, lamp, bathtub, railing, cushion, base, box, column, "
    "signboard, chest of drawers, counter, sand, sink, skyscraper, fireplace, refrigerator, grandstand, path, "
    "stairs, runway, case, pool table, pillow, screen door, stairway, river, bridge, bookcase, blind, "
    "coffee table, toilet, flower, book, hill, bench, countertop, stove, palm, kitchen island, computer, "
    "swivel chair, boat, bar, arcade machine, hovel, bus, towel, light, truck, tower, chandelier, awning, "
    "streetlight, booth, television receiver, airplane, dirt track, apparel, pole, land, bannister, escalator, "
    "ottoman, bottle, buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, washer, plaything, "
    "swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven, ball, food, step, tank, "
    "trade name, microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood, sconce, "
    "vase, traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor, bulletin board, shower, "
    "radiator, glass, clock, flag"
).split(", ")

CELEBAMASK_HQ = [
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
]

FACADES = [
    "unused", "background", "facade", "window", "door", "cornice", "sill", "balcony", "blind", "deco",
    "molding", "pillar", "shop",
]

_COCO_THINGS = (  # COCO category ids 1..91; "unused-N" ids have no thing class
    "person, bicycle, car, motorcycle, airplane, bus, train, truck, boat, traffic light, fire hydrant, unused-12, "
    "stop sign, parking meter, bench, bird, cat, dog, horse, sheep, cow, elephant, bear, zebra, giraffe, "
    "unused-26, backpack, umbrella, unused-29, unused-30, handbag, tie, suitcase, frisbee, skis, snowboard, "
    "sports ball, kite, baseball bat, baseball glove, skateboard, surfboard, tennis racket, bottle, unused-45, "
    "wine glass, cup, fork, knife, spoon, bowl, banana, apple, sandwich, orange, broccoli, carrot, hot dog, "
    "pizza, donut, cake, chair, couch, potted plant, bed, unused-66, dining table, unused-68, unused-69, toilet, "
    "unused-71, tv, laptop, mouse, remote, keyboard, cell phone, microwave, oven, toaster, sink, refrigerator, "
    "unused-83, book, clock, vase, scissors, teddy bear, hair drier, toothbrush, unused-91"
).split(", ")
_COCO_STUFF = (  # COCO-Stuff ids 92..182
    "banner, blanket, branch, bridge, building-other, bush, cabinet, cage, cardboard, carpet, ceiling-other, "
    "ceiling-tile, cloth, clothes, clouds, counter, cupboard, curtain, desk-stuff, dirt, door-stuff, fence, "
    "floor-marble, floor-other, floor-stone, floor-tile, floor-wood, flower, fog, food-other, fruit, "
    "furniture-other, grass, gravel, ground-other, hill, house, leaves, light, mat, metal, mirror-stuff, moss, "
    "mountain, mud, napkin, net, paper, pavement, pillow, plant-other, plastic, platform, playingfield, railing, "
    "railroad, river, road, rock, roof, rug, salad, sand, sea, shelf, sky-other, skyscraper, snow, solid-other, "
    "stairs, stone, straw, structural-other, table, tent, textile-other, towel, tree, vegetable, wall-brick, "
    "wall-concrete, wall-other, wall-panel, wall-stone, wall-tile, wall-wood, water-other, waterdrops, "
    "window-blind, window-other, wood"
).split(", ")
COCO_STUFF = _COCO_THINGS + _COCO_STUFF

DEEPFASHION = [f"part {index}" for index in range(20)]


def palette(count: int) -> list[list[int]]:
    """``count`` distinct RGB colours: the bits of each id spread over the three channels."""
    colors = []
    for index in range(count):
        red = green = blue = 0
        value = index + 1
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colors.append([red, green, blue])
    return colors


def colorize(label: np.ndarray, colors: list[list[int]]) -> np.ndarray:
    """(H, W) label ids -> (H, W, 3) uint8 using ``colors``; ids without a colour are black."""
    table = np.zeros((max(int(label.max()) + 1, len(colors)), 3), dtype=np.uint8)
    table[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return table[label.clip(min=0)]


def class_table(dataset: str) -> tuple[list[str], list[list[int]]]:
    """(names, colours) of a named dataset's label ids 0..num_classes-1."""
    if dataset == "cityscapes":
        return [n for n, _ in CITYSCAPES], [list(c) for _, c in CITYSCAPES]
    if dataset == "synthetic":
        from dagan.data.synthetic import CLASSES  # the scenes' own module (it writes them with these colours)

        return [n for n, _ in CLASSES], [list(c) for _, c in CLASSES]
    names = {"ade20k": ADE20K, "celebamask_hq": CELEBAMASK_HQ, "facades": FACADES, "coco_stuff": COCO_STUFF,
             "deepfashion": DEEPFASHION}[dataset]
    return list(names), palette(len(names))
