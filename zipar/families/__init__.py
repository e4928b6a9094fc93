"""Model families: what each published checkpoint format holds and how it maps onto the engine.

- :mod:`zipar.families.llamagen`: LlamaGen GPT checkpoints (c2i and t2i);
- :mod:`zipar.families.vq16`: LlamaGen's VQ-16 image tokenizer decoder (tokens -> pixels);
- :mod:`zipar.families.emu3` and :mod:`zipar.families.chameleon`: Emu3-Gen and Chameleon /
  Lumina-mGPT Hugging Face folders (:mod:`zipar.families.hf`) on the shared 1-D-RoPE decoder
  face :mod:`zipar.families.decoder`;
- :mod:`zipar.families.emu3_vq`: Emu3's vision tokenizer decoder (Emu3VQVAE, single images);
- :mod:`zipar.families.chameleon_vq`: Chameleon's VQGAN decoder (Lumina-mGPT's vqgan.ckpt);
- :mod:`zipar.families.image_tokens`: image token id <-> codebook index from a vocabulary;
- :mod:`zipar.families.prompts`: Emu3 / Lumina-mGPT prompt templates from a tokenizer.json;
- :mod:`zipar.families.text`: a loaded folder's tokenizer file and VQ decoder
  (``generate(prompt="...")``, ``result.images``);
- :mod:`zipar.families.tiny`: tiny random Emu3 / Lumina-mGPT folders (tests, notebooks);
- :mod:`zipar.families.auto`: a folder loaded by what its config.json names.
"""
