"""VMDLS latent diagnosis on the Fashion-MNIST subset (README '### VMDLS'): the trainer's step (same loss
functions, sampler, margin schedule, class-mean prior) in a bare loop with Adam, printing per epoch the loss
terms, |mu|, sigma and the nearest-class-mean accuracy on mu (train / test subset). Switches for what was
varied: --noise (scale of the reparameterisation noise; 0 = z = mu), --metric_on mu, --distance, --lr, --gen
(generation_epoch), --repeat (passes of the subset per epoch = longer epochs), --kl.
Needs the subset lists (python scripts/vmdls_fmnist_small_lists.py data).
    python scripts/vmdls_latent_check.py --epochs 6 [--metric_on mu] [--data-root data]"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openood_ext.networks.vmdls import VMDLSNet
from openood_ext.trainers.vmdls_losses import (
    class_kl,
    margin_schedule,
    triplet_distancing_loss,
)
from openood_ext.trainers.vmdls_sampler import ClassBalancedBatchSampler

p = argparse.ArgumentParser()
p.add_argument('--epochs', type=int, default=10)
p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--bc', type=int, default=10); p.add_argument('--bs', type=int, default=10)
p.add_argument('--distance', default='normalized')
p.add_argument('--margins_epoch', type=int, default=1)
p.add_argument('--mmax', type=float, default=32)
p.add_argument('--kl', type=float, default=0.1)
p.add_argument('--gen', type=int, default=0)
p.add_argument('--noise', type=float, default=1.0)  # scale of eps
p.add_argument('--data', default='fmnist')
p.add_argument('--seed', type=int, default=0)
p.add_argument('--data-root', default='data')
p.add_argument('--metric_on', default='z')
p.add_argument('--repeat', type=int, default=1)
p.add_argument('--every', type=int, default=1)
a = p.parse_args()
torch.manual_seed(a.seed); torch.set_num_threads(1)
root = a.data_root.rstrip('/') + '/'
def load(lst):
    xs, ys = [], []
    for line in Path(lst).read_text().splitlines():
        path, y = line.split()
        xs.append(np.asarray(Image.open(root + 'images_classic/' + path).convert('L'), dtype=np.float32) / 255.)
        ys.append(int(y))
    x = torch.tensor(np.stack(xs))[:, None]
    return (x - 0.5) / 0.5, torch.tensor(ys)
L = root + 'benchmark_imglist/vmdls_fmnist_small/'
xtr, ytr = load(L + 'train_fashionmnist.txt'); xte, yte = load(L + 'test_fashionmnist.txt')
net = VMDLSNet('mnist_conv', 10, 1, 28, 32, distance=a.distance)
opt = torch.optim.Adam(net.parameters(), lr=a.lr)
sampler = ClassBalancedBatchSampler(ytr, a.bc, a.bs, a.seed)
means = torch.zeros(10, 32)
def ncm(x, y, m):
    net.eval()
    with torch.no_grad():
        mu, lv = net.encode(x)
        if a.distance == 'normalized':
            d = ((F.normalize(mu, dim=1)[:, None] - F.normalize(m, dim=1)[None]) ** 2).sum(-1)
        else:
            d = ((mu[:, None] - m[None]) ** 2).sum(-1)
    net.train()
    return (d.argmin(1) == y).float().mean().item() * 100, mu.norm(dim=1).mean().item(), torch.exp(0.5 * lv).mean().item()
t0 = time.time()
for ep in range(a.epochs):
    nm = margin_schedule(ep, 0.15, 1.0, a.margins_epoch, a.mmax)
    sums = torch.zeros(10, 32); cnt = torch.zeros(10)
    logs = []
    for b in [bb for r in range(a.repeat) for bb in sampler.batches(ep * a.repeat + r)]:
        x, y = xtr[b], ytr[b]
        mu, lv = net.encode(x)
        z = mu + a.noise * torch.exp(0.5 * lv) * torch.randn_like(mu)
        m = triplet_distancing_loss(z if a.metric_on == 'z' else mu, y, 0.1, nm, a.distance)
        kl = a.kl * class_kl(z, mu, lv, y, means, 0.1) if ep >= a.gen and a.kl > 0 else torch.zeros(())
        loss = m['loss'] + kl
        opt.zero_grad(); loss.backward(); opt.step()
        sums.index_add_(0, y, z.detach()); cnt.index_add_(0, y, torch.ones(len(y)))
        logs.append([loss.item(), m['triplet'].item(), m['distancing'].item(), kl.item()])
    means = sums / cnt[:, None]
    if (ep + 1) % a.every and ep + 1 < a.epochs: continue
    acc_tr, nmu, sd = ncm(xtr, ytr, means)
    acc_te, _, _ = ncm(xte, yte, means)
    lg = np.mean(logs, 0)
    print(f"ep{ep+1} M={nm:.2f} loss={lg[0]:.3f} trip={lg[1]:.4f} dist={lg[2]:.3f} kl={lg[3]:.4f} |mu|={nmu:.3f} sigma={sd:.3f} ncm_tr={acc_tr:.1f} ncm_te={acc_te:.1f} t={time.time()-t0:.0f}s", flush=True)
