"""Studies over many worlds and seeds (``make paper``, the threshold calibration): drivers that
run the pipeline's stages in scratch projects; ``mofi_core`` never imports them."""
