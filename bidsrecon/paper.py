"""The method's published preprocessing settings, in one place (Shen et al. 2019, PLoS Comput Biol
15(1): e1006633, Methods; REFERENCE.md §2): the defaults of the options, the Nipype interfaces and
the preprocessing functions all come from here.
"""

#: Seconds at the start of each run left out ("the first 8 s of each run were discarded").
DISCARD_SECONDS = 8.0
#: Haemodynamic delay of a block sample: its volumes are those of the block shifted by 4 s.
DELAY_SECONDS = 4.0
#: Outliers beyond this many SD of a voxel's values are clipped.
CLIP_SD = 3.0
