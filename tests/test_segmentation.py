import torch

from simulator.segmentation import build_model, dice_per_image, seg_loss


def test_dice_by_hand():
    pred = torch.zeros(3, 1, 4, 4)
    tgt = torch.zeros(3, 1, 4, 4)
    pred[0, 0, :2, :2] = 1  # 4 px
    tgt[0, 0, :2, :1] = 1  # 2 px, overlap 2 -> 2*2/6
    tgt[1, 0, 0, 0] = 1  # empty prediction on non-empty mask -> 0
    # image 2: empty and empty -> 1
    d = dice_per_image(pred, tgt)
    assert torch.allclose(d, torch.tensor([4 / 6, 0.0, 1.0]))


def test_model_seeded_and_shapes():
    a, b = build_model(1, 8, 2, seed=3), build_model(1, 8, 2, seed=3)
    c = build_model(1, 8, 2, seed=4)
    x = torch.rand(2, 1, 32, 32)
    assert a(x).shape == (2, 1, 32, 32)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


def test_loss_decreases_on_one_batch():
    torch.manual_seed(0)
    model = build_model(1, 8, 2, seed=0)
    x = torch.rand(4, 1, 32, 32)
    y = (x > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss = seg_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
