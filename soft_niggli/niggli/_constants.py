"""The reducer's numeric constants: error bounds, resolution limits, tolerance levels, sweeps.

The NumPy core reads them here; the compiled kernel (``_niggli_kernel.c``) defines the same values
and exports them as module attributes, and the tests compare the two. The design notes on the reducer
("Resolution", "Tolerance") explain where each bound comes from.
"""

# Error bounds of one basis vector b_i = Σ_j T_ij L_j (see "Resolution" in the reducer's design notes). The
# plain float product is off by at most γ_3 r_i ≤ 2**-50 r_i, with r_i = Σ_j |T_ij| ‖L_j‖ (the vector's size
# before cancellation). The error-free product (soft_niggli/_exact.py: Sum2 of 12 exact partial products)
# is off by at most ε‖b_i‖ + γ_11² s_i ≤ ε‖b_i‖ + 2**-98 s_i, with s_i = Σ_j (|hi(T_ij)| + |lo(T_ij)|) ‖L_j‖
# the size of its partial products (its split T = hi + lo, hi = 2**26 floor(T / 2**26), makes |hi| + |lo|
# about |T| + 2**27 for a negative entry, |T| otherwise).
PLAIN_PRODUCT_ERROR = 2.0**-50
EXACT_PRODUCT_ERROR = 2.0**-98
SPLIT = 2.0**26
# Every basis vector must be known to within rel_tol / ACCURACY_MARGIN of its length: the plain product
# is replaced by the error-free one where it is not, and a vector the error-free product cannot resolve to
# that accuracy makes the item DEGENERATE.
ACCURACY_MARGIN = 16.0
# The rounding of a product of two basis vectors (their errors, plus at most 2**-50 |b_i||b_j| for the
# product itself) must stay below this share of the smaller squared length; otherwise the bounds
# |ξ| <= B, |η| <= A, |ζ| <= A cannot be decided (for vectors computed without cancellation: a length
# ratio above ~2e13). Unresolved: DEGENERATE.
CROSS_MARGIN = 1.0 / 16.0
EPS = 2.0**-53
# Squared lengths below this (after scaling the cell's largest entry into [0.5, 1)) would leave the metric
# in float64's subnormal range, where it loses relative precision: DEGENERATE (vectors below ~1e-146 of
# the cell's largest entry).
MIN_SQUARED_LENGTH = 2.0**-968
# Below this ratio of reduced volume to the product of reduced lengths the basis is flat: DEGENERATE. (A
# Niggli-reduced basis has a ratio above 0.5, so this only catches exactly singular bases.)
DEGENERATE_VOLUME_RATIO = 1e-12
# Transform entries beyond this are a sign of a (numerically) dense lattice, not of a skewed cell (and the
# error-free product needs entries below 2**52).
MAX_TRANSFORM_ENTRY = 2.0**44
# Transforms with entries beyond this always use the error-free product (they are about to need it anyway).
PLAIN_PRODUCT_LIMIT = 2.0**10
# Tolerance levels (see "Tolerance" in the reducer's design notes): an item stuck at rel_tol goes on with
# rel_tol / LEVEL_FACTOR, and so on, LEVELS levels in all; it is stuck when a round changes nothing or
# when A + B + C has not gone down for STALL_ROUNDS rounds.
LEVELS = 3
LEVEL_FACTOR = 8.0
STALL_ROUNDS = 8

# Size-reduction sweeps per round: two bring most cells to a Buerger-reduced basis in the first round,
# so that only the Křivý–Gruber sign and boundary steps remain.
SWEEPS = 2
