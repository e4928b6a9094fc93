"""Model families: what each published checkpoint format holds and how it maps onto the engine.

- :mod:`zipar.families.llamagen`: LlamaGen GPT checkpoints (c2i and t2i);
- :mod:`zipar.families.vq16`: LlamaGen's VQ-16 image tokenizer decoder (tokens -> pixels).

Room is left for Emu3 (emu3.py) and Chameleon / Lumina-mGPT (chameleon.py) beside them.
"""
