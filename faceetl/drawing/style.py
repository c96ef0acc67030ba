"""The look of every picture: colours, spacing, font sizes and the default caps.

The bottom of :mod:`faceetl.drawing`: it imports nothing, and every other module of the package
takes its colours and sizes from here, so a change of look is made in this one place (and
:data:`RESERVED` keeps the drawn colours exact in the 256-colour PNG that Jupyter shows).
"""

from __future__ import annotations

#: longest side of a picture, in pixels, unless a function is told otherwise
MAX_SIZE = 800
#: box outline colour (RGB)
BOX_COLOUR = (0, 255, 0)
#: colours of the five landmarks: left eye, right eye, nose, left and right mouth corner
LANDMARK_COLOURS = ((255, 0, 0), (0, 96, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255))
SAME_COLOUR = (0, 150, 0)
DIFFERENT_COLOUR = (200, 0, 0)
BACKGROUND = (255, 255, 255)
TILE_GREY = (215, 215, 215)
TEXT_COLOUR = (0, 0, 0)
GAP = 4
FONT_SIZE = 12
SCORE_FONT_SIZE = 10
#: faces a crop grid shows at most; photos a box sheet shows at most
MAX_FACES = 64
MAX_IMAGES = 12

#: colours kept exact in the 256-colour PNG (a few pixels of a landmark would otherwise be
#: merged into the photo's colours)
RESERVED = (
    BOX_COLOUR, *LANDMARK_COLOURS, SAME_COLOUR, DIFFERENT_COLOUR, TEXT_COLOUR, BACKGROUND, TILE_GREY,
)  # fmt: skip
