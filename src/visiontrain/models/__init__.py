"""Network builders, one module per model family; the one weight loader (``weights``) and where a network's
backbone is (``backbone``).

May import data (specs only), artifact and errors; never tasks or anything above.
"""
