# Frozen modules of a midge firmware: the stock board's own, then the broker
# and the hub. Frozen bytecode runs from flash: the broker's code costs no heap.
# tools/firmware assembles the board directory this is used from: the stock
# MicroPython board's files, its manifest as stock_manifest.py, and a link
# "midge" to this repository.
include("$(BOARD_DIR)/stock_manifest.py")
package("midge", base_path="$(BOARD_DIR)/midge/lib")
module("midge_hub.py", base_path="$(BOARD_DIR)/midge/firmware")
module("midge_settings.py", base_path="$(BOARD_DIR)/midge/firmware")
