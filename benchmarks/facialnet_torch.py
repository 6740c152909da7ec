"""FacialNet in PyTorch for the speed comparisons (conv_speed.py, gpu_peer.py): the layer table,
the optimiser settings and the torch.nn model, same architecture as
facialnet_jax/training/models.py.

torch is imported inside make_net only, so the JAX workers (the project's environment, which
need not have torch) can import the table.
"""

# name, features, kernel, stride, padding (the paper's table)
LAYERS = (('conv1', 32, 3, 2, 1), ('conv2', 64, 3, 1, 1), ('conv3', 128, 3, 2, 1),
          ('conv4', 128, 3, 1, 1), ('conv5', 128, 1, 1, 0), ('conv6', 256, 3, 2, 0),
          ('conv7', 512, 3, 2, 1), ('conv8', 512, 1, 1, 0))
# head, classes, dropout after the first and the second hidden layer
HEADS = (('gender', 2, 0.5, 0.3), ('age', 8, 0.4, 0.2))
N_PARAMS = 4_159_242
LR, MOMENTUM, WEIGHT_DECAY = 2e-3, 0.9, 5e-4


def make_net():
  """The PyTorch FacialNet (default PyTorch initialisation: only speed is measured); its
  forward returns [gender logits, age logits]."""
  import torch.nn as tnn  # pylint: disable=import-outside-toplevel

  class Net(tnn.Module):
    def __init__(self):
      super().__init__()
      layers, cin = [], 1
      for _, f, k, s, p in LAYERS:
        layers += [tnn.Conv2d(cin, f, k, s, p), tnn.ReLU()]
        cin = f
      self.features = tnn.Sequential(*layers, tnn.MaxPool2d(3, 2), tnn.Flatten())
      self.heads = tnn.ModuleList(
          tnn.Sequential(tnn.Linear(2048, 512), tnn.ReLU(), tnn.Dropout(d1), tnn.Linear(512, 64),
                         tnn.ReLU(), tnn.Dropout(d2), tnn.Linear(64, n))
          for _, n, d1, d2 in HEADS)

    def forward(self, x):
      h = self.features(x)
      return [head(h) for head in self.heads]

  net = Net()
  assert sum(p.numel() for p in net.parameters()) == N_PARAMS
  return net
