"""Values the network and losses share with the data and engine layers; plain Python, importable without torch."""

IGNORE = 255  # label value of a pixel whose class is unknown: the one 8-bit value no class id takes
STRIDE = 32  # the backbone's largest stride (res5): input heights and widths must be multiples of it
# the criterion's terms
LOSS_KEYS = ("loss_ce", "loss_mask", "loss_dice", "loss_sem", "loss_tags", "loss_comp", "loss_sim", "loss_dist")
