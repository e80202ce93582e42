"""The published SimFormer novel-class splits (COCO-Stuff-10K, 171 classes; ADE20K, 150 classes).

Ids are contiguous class ids (COCO-Stuff: category id - 1 over the 171 used ids; ADE20K: raw - 1).
Names let ``split`` check that the user's class list uses the same ids.
"""

from __future__ import annotations

_RAW = {
    "coco-stuff-10k-s1": (
        "3 motorcycle, 6 train, 10 fire hydrant, 11 stop sign, 18 sheep, 19 cow, 26 handbag, 27 "
        "tie, 31 snowboard, 34 baseball bat, 37 surfboard, 38 tennis racket, 40 wine glass, 41 cup, "
        "50 broccoli, 53 pizza, 55 cake, 59 bed, 61 toilet, 68 microwave, 76 scissors, 82 branch, "
        "85 bush, 90 ceiling-other, 92 cloth, 94 clouds, 103 floor-other, 106 floor-wood, 108 fog, "
        "112 grass, 113 gravel, 117 leaves, 120 metal, 127 paper, 129 pillow, 131 plastic, 141 "
        "salad, 146 skyscraper, 155 textile-other, 156 towel, 159 wall-brick, 166 water-other, 169 "
        "window-other"
    ),
    "coco-stuff-10k-s2": (
        "1 bicycle, 3 motorcycle, 6 train, 7 truck, 9 traffic light, 10 fire hydrant, 13 bench, 27 "
        "tie, 31 snowboard, 35 baseball glove, 38 tennis racket, 40 wine glass, 43 knife, 44 spoon, "
        "53 pizza, 62 tv, 68 microwave, 74 clock, 77 teddy bear, 80 banner, 82 branch, 84 "
        "building-other, 86 cabinet, 99 dirt, 101 fence, 108 fog, 110 fruit, 111 furniture-other, "
        "116 house, 118 light, 121 mirror-stuff, 122 moss, 125 napkin, 131 plastic, 137 road, 141 "
        "salad, 148 solid-other, 153 table, 155 textile-other, 156 towel, 160 wall-concrete, 161 "
        "wall-other, 166 water-other"
    ),
    "coco-stuff-10k-s3": (
        "0 person, 5 bus, 10 fire hydrant, 13 bench, 15 cat, 16 dog, 20 elephant, 23 giraffe, 25 "
        "umbrella, 27 tie, 28 suitcase, 31 snowboard, 33 kite, 34 baseball bat, 35 baseball glove, "
        "36 skateboard, 40 wine glass, 43 knife, 47 apple, 50 broccoli, 51 carrot, 58 potted plant, "
        "62 tv, 69 oven, 80 banner, 81 blanket, 83 bridge, 84 building-other, 87 cage, 90 "
        "ceiling-other, 101 fence, 105 floor-tile, 119 mat, 121 mirror-stuff, 124 mud, 126 net, 137 "
        "road, 138 rock, 150 stone, 154 tent, 157 tree, 158 vegetable, 164 wall-tile"
    ),
    "coco-stuff-10k-s4": (
        "3 motorcycle, 12 parking meter, 13 bench, 14 bird, 17 horse, 24 backpack, 25 umbrella, 26 "
        "handbag, 27 tie, 33 kite, 37 surfboard, 40 wine glass, 46 banana, 50 broccoli, 57 couch, "
        "58 potted plant, 61 toilet, 69 oven, 76 scissors, 83 bridge, 87 cage, 89 carpet, 92 cloth, "
        "100 door-stuff, 102 floor-marble, 106 floor-wood, 109 food-other, 110 fruit, 112 grass, "
        "113 gravel, 114 ground-other, 121 mirror-stuff, 128 pavement, 133 playingfield, 134 "
        "railing, 137 road, 144 shelf, 149 stairs, 151 straw, 161 wall-other, 162 wall-panel, 164 "
        "wall-tile, 170 wood"
    ),
    "ade20k-s1": (
        "1 building, 3 floor, 6 road, 8 window, 10 cabinet, 13 earth, 17 plant, 22 painting, 23 "
        "sofa, 29 field, 33 desk, 38 rail, 41 box, 50 refrigerator, 51 grandstand, 56 pool table, "
        "67 book, 70 countertop, 71 stove, 74 computer, 77 bar, 81 towel, 92 clothes, 93 pole, 98 "
        "bottle, 101 stage, 102 van, 103 ship, 110 stool, 113 falls, 119 ball, 121 step, 126 "
        "animal, 127 bicycle, 130 screen, 136 traffic light, 147 glass, 149 flag"
    ),
    "ade20k-s2": (
        "0 wall, 10 cabinet, 21 water, 27 mirror, 28 rug, 29 field, 34 rock, 40 base, 42 column, 43 "
        "signboard, 51 grandstand, 57 pillow, 58 screen door, 65 toilet, 66 flower, 68 hill, 69 "
        "bench, 73 kitchen island, 76 boat, 78 arcade machine, 85 chandelier, 88 booth, 90 plane, "
        "100 poster, 105 conveyer belt, 110 stool, 111 barrel, 112 basket, 113 falls, 114 tent, 117 "
        "cradle, 123 trade name, 124 microwave, 132 sculpture, 134 sconce, 139 fan, 142 plate, 146 "
        "radiator"
    ),
    "ade20k-s3": (
        "0 wall, 5 ceiling, 9 grass, 15 table, 16 mountain, 21 water, 24 shelf, 25 house, 27 "
        "mirror, 32 fence, 34 rock, 35 wardrobe, 38 rail, 39 cushion, 55 case, 70 countertop, 76 "
        "boat, 85 chandelier, 95 bannister, 96 escalator, 98 bottle, 100 poster, 106 canopy, 109 "
        "pool, 111 barrel, 118 oven, 119 ball, 124 microwave, 128 lake, 132 sculpture, 134 sconce, "
        "135 vase, 136 traffic light, 138 trash can, 140 pier, 141 crt screen, 143 monitor, 144 "
        "bulletin board"
    ),
    "ade20k-s4": (
        "5 ceiling, 11 sidewalk, 13 earth, 16 mountain, 21 water, 24 shelf, 26 sea, 32 fence, 35 "
        "wardrobe, 42 column, 53 stairs, 56 pool table, 60 river, 61 bridge, 63 blind, 64 coffee "
        "table, 68 hill, 70 countertop, 75 swivel chair, 82 light, 91 dirt track, 93 pole, 94 land, "
        "99 buffet, 100 poster, 105 conveyer belt, 111 barrel, 115 bag, 118 oven, 121 step, 122 "
        "tank, 130 screen, 132 sculpture, 135 vase, 137 tray, 138 trash can, 141 crt screen, 143 "
        "monitor"
    ),
}
NUM_CLASSES = {"coco-stuff-10k": 171, "ade20k": 150}


def _parse(text: str) -> dict[int, str]:
    pairs = (entry.strip().split(" ", 1) for entry in text.split(","))
    return {int(i): name for i, name in pairs}


PRESETS: dict[str, dict[int, str]] = {name: _parse(text) for name, text in _RAW.items()}


def preset_num_classes(name: str) -> int:
    return NUM_CLASSES[name.rsplit("-s", 1)[0]]
