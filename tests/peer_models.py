"""Networks shared by the parity tests against diffusers' schedulers."""

import torch


def peer_model():
    """A fixed smooth network (a random conv, tanh), the same for both sides of a parity test."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1).double()

    def model(x, t):
        with torch.no_grad():
            return torch.tanh(net(x.double()) + t.view(-1, 1, 1, 1).double() / 1000).to(x.dtype)
    return model
