"""Writes tests/fixtures/family_decoders.npz: golden outputs of the Emu3 and Chameleon VQ
decoders on tiny random weights, so that tests/test_family_decoders.py also checks the decoders
in runs without torch.

    PYTHONPATH=$PWD python3 tests/make_decoder_fixtures.py      (needs torch + transformers)

The expected outputs come from the references, not from zipar: Emu3 from transformers'
``Emu3VQVAE.decode``; Chameleon from the slow torch reference in test_family_decoders.py
(written from the spec, NCHW, torch.nn.functional). Weights are stored float16-rounded (to keep
the file small) and the references run on exactly those values, in float32.
"""

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import test_family_decoders as t  # noqa: E402


def main(out=os.path.join(HERE, "fixtures", "family_decoders.npz")):
    import torch

    arrays = {}
    # ---- Emu3 (transformers Emu3VQVAE)
    model = t.tiny_emu3_vqvae(seed=3, base_channels=32, channel_multiplier=[1, 1],
                              attn_resolutions=[1], codebook_size=16, num_res_blocks=1)
    sd = {k: v.numpy() for k, v in model.state_dict().items()
          if not k.startswith(("encoder.", "quant_conv.")) and v.is_floating_point()}
    sd = {k: v.astype(np.float16).astype(np.float32) for k, v in sd.items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    codes = np.random.default_rng(5).integers(0, 16, (1, 4, 5))
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(codes)).numpy()
    for k, v in sd.items():
        arrays["emu3/" + k] = v.astype(np.float16)
    arrays["emu3:codes"] = codes
    arrays["emu3:float"] = ref
    arrays["emu3:uint8"] = t.emu3_uint8_reference(ref)

    # ---- Chameleon (torch reference from the spec)
    csd = t.tiny_chameleon_state_dict(seed=4, ch=32, ch_mult=(1, 1), z=8, embed=8, K=16,
                                      nres=0, attn_levels=(1,))
    csd = {k: v.astype(np.float16).astype(np.float32) for k, v in csd.items()}
    ccodes = np.random.default_rng(6).integers(0, 16, (1, 3, 4))
    cref = t.chameleon_reference(csd, ccodes)
    for k, v in csd.items():
        arrays["chameleon/" + k] = v.astype(np.float16)
    arrays["chameleon:codes"] = ccodes
    arrays["chameleon:float"] = cref
    arrays["chameleon:uint8"] = t.chameleon_uint8_reference(cref)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main(*sys.argv[1:])
