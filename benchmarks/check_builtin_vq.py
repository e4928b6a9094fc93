"""Checks of the shipped VQ model against the training run's GPU outputs, on this machine.

    python3 benchmarks/check_builtin_vq.py vq_data.npz benchmarks/results/fmnist_vq_check.json

vq_data.npz is what training/train_vq_fmnist.py writes (test tokens, 28x28 reconstructions,
per-image test NLL, logits of two test images, samples). Measured: the NumPy VQ decoder
(zipar.families.vq16) against the GPU reconstructions, the C engine's log-likelihoods and logits
against PyTorch's, the reconstruction FID-proxy and class accuracy, and FID-proxy / class
accuracy of the GPU samples decoded here.
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import zipar  # noqa: E402
DATA = os.path.join(os.path.dirname(zipar.__file__), 'data')
from zipar.families import vq16 as vq  # noqa: E402
from zipar.fmnist import eval as ev  # noqa: E402
from zipar.fmnist import resize as fv  # noqa: E402
z = np.load(sys.argv[1])
tok = z['test_tokens'].astype(np.int64)
vx, vy = ev.test_set()
with np.load(os.path.join(DATA, 'fmnist_vq_tokenizer.npz')) as t:
    sd = {k: t[k] for k in t.files if k != '__zipar_vq__'}
dec = vq.VQDecoder(sd)
out = {}
t0 = time.time()
n = 100
pix = dec.decode(tok[:n])
out['numpy_decode_s_per_image'] = (time.time() - t0) / n
r28 = fv.to_grey28(pix)
d = np.abs(r28.astype(int) - z['recon_test_28'][:n].astype(int))
print('decode', out['numpy_decode_s_per_image'], flush=True)
out['recon28_numpy_vs_gpu'] = {'n': n, 'max_abs': int(d.max()),
                                'frac_differ': float((d > 0).mean())}
# GPT NLL through the C engine
m = zipar.load_llamagen(os.path.join(DATA, 'fmnist_vq_gpt.npz'))
k = 300
t0 = time.time()
lp = m.log_prob(vy[:k], tok[:k])
ref = z['gpt_test_nll_nats'][:k]
out['nll_check'] = {'n': k, 'zipar_mean_nats': float(-lp.mean()),
                    'torch_mean_nats': float(ref.mean()),
    'zipar_bits_per_token': float(-lp.sum() / (k * 256) / np.log(2)),
    'torch_bits_per_token': float(ref.sum() / (k * 256) / np.log(2)),
    'max_rel_diff_per_image': float(np.max(np.abs(-lp - ref) / ref)),
    'rel_diff_of_mean': float(abs(-lp.mean() - ref.mean()) / ref.mean()), 's': time.time() - t0}
print(out['nll_check'], flush=True)
lg = m.logits(vy[:2], tok[:2])
out['logits_max_abs_diff_2img'] = float(np.abs(lg - z['gpt_logits_test2']).max())
# recon FID-proxy (GPU reconstructions, checked above against the NumPy path)
rec = z['recon_test_28']
f_all = ev.fid_proxy(rec, vx)
f_split = ev.fid_proxy(rec[:5000], vx[5000:])
out['recon_fid_proxy_all10k_vs_test'] = f_all
out['recon_fid_proxy_0_4999_vs_test_5000_9999'] = f_split
print('fid', f_all, f_split, flush=True)
out['recon_class_accuracy'] = ev.class_accuracy(rec, vy)
out['test_class_accuracy'] = ev.class_accuracy(vx, vy)
# GPU samples, decoded here
for s in ('cfg1', 'cfg4'):
    st = z['samples_' + s].astype(np.int64)
    im = fv.to_grey28(dec.decode(st))
    out['samples_' + s] = {'n': len(st), 'fid_proxy_vs_test': ev.fid_proxy(im, vx),
                           'class_accuracy': ev.class_accuracy(im, z['samples_labels'])}
    print(s, out['samples_' + s], flush=True)

print(json.dumps(out, indent=1, default=float))
json.dump(out, open(sys.argv[2], 'w'), indent=1, default=float)
