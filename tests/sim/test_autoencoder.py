"""The frame autoencoder: shapes, conversions, the latent scale, and that it can learn."""
import numpy as np
import pytest
import torch

from sim.autoencoder import (AE_PRESETS, Autoencoder, AutoencoderConfig, ae_loss, frames_to_tensor,
                             tensor_to_frames)


def tiny(seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(AutoencoderConfig.from_name("tiny"))


def structured_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients under checkerboards of random cell size: float [n, 3, h, w] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")  # (h, w)
    images = []
    for _ in range(n):
        phase = torch.rand(3, 1, 1, generator=g) * 2 * torch.pi  # per colour channel
        fx, fy = torch.rand(2, generator=g) * 2 * torch.pi
        gradient = torch.sin(phase + fx * xx + fy * yy)  # (3, h, w)
        cell = 2 ** int(torch.randint(2, 4, (1,), generator=g))  # 4 or 8 px
        checker = ((torch.arange(h)[:, None] // cell + torch.arange(w)[None, :] // cell) % 2) * 2.0 - 1  # (h, w)
        images.append(0.6 * gradient + 0.3 * checker * torch.rand(3, 1, 1, generator=g))
    return torch.stack(images).clamp(-1, 1)


@pytest.mark.parametrize("preset, h, w", [("tiny", 128, 128), ("tiny", 64, 96), ("small", 32, 48), ("base", 32, 48)])
def test_shapes(preset, h, w):
    torch.manual_seed(0)
    ae = Autoencoder(AutoencoderConfig.from_name(preset))
    x = structured_images(2, h, w)
    z = ae.encode(x)
    assert z.shape == (2, 8, h // 8, w // 8) and z.dtype == torch.float32
    x_hat = ae.decode(z)
    assert x_hat.shape == (2, 3, h, w) and x_hat.dtype == torch.float32
    x_hat2, z2 = ae(x)
    assert torch.allclose(z2, z) and torch.allclose(x_hat2, x_hat)


def test_rejects_bad_sizes():
    ae = tiny()
    with pytest.raises(ValueError, match="multiples of 8"):
        ae.encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(ValueError, match="latents"):
        ae.decode(torch.zeros(1, 4, 8, 8))


def test_frame_conversions_round_trip():
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 16, 24, 3), dtype=np.uint8)
    x = frames_to_tensor(frames)
    assert x.shape == (3, 3, 16, 24) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], torch.from_numpy(frames[..., 0]).float() / 127.5 - 1)  # channel order kept
    back = tensor_to_frames(x)
    assert back.dtype == torch.uint8 and back.shape == frames.shape
    assert np.array_equal(back.numpy(), frames)  # exact: every uint8 value survives
    assert torch.equal(frames_to_tensor(torch.from_numpy(frames)), x)  # torch input too
    # out-of-range decoder output is clamped, not wrapped
    assert tensor_to_frames(torch.full((1, 3, 2, 2), 3.0)).unique().tolist() == [255]
    assert tensor_to_frames(torch.full((1, 3, 2, 2), -3.0)).unique().tolist() == [0]
    with pytest.raises(ValueError, match="uint8"):
        frames_to_tensor(frames.astype(np.float32))


def test_encode_decode_from_uint8_frames():
    ae = tiny()
    frames = tensor_to_frames(structured_images(2, 32, 32))
    out = tensor_to_frames(ae.decode(ae.encode(frames_to_tensor(frames))))
    assert out.shape == frames.shape and out.dtype == torch.uint8


def test_latent_scale_is_fitted_and_saved():
    ae = tiny()
    assert "latent_scale" in ae.state_dict() and float(ae.latent_scale) == 1.0
    x = structured_images(8, 32, 32)
    raw_std = ae.encode(x).std().item()
    scale = ae.fit_latent_scale(tensor_to_frames(x))  # uint8 frames [B, H, W, 3] are accepted
    assert scale == pytest.approx(raw_std, rel=0.05)
    assert ae.encode(x).std().item() == pytest.approx(1.0, rel=0.05)
    # decode undoes the scale: reconstructions do not depend on it
    ae2 = tiny()
    assert torch.allclose(ae.decode(ae.encode(x)), ae2.decode(ae2.encode(x)), atol=1e-5)
    ae3 = tiny(seed=1)
    ae3.load_state_dict(ae.state_dict())
    assert float(ae3.latent_scale) == pytest.approx(scale)


def test_presets():
    assert set(AE_PRESETS) >= {"tiny", "small", "base"}
    assert AutoencoderConfig.from_name("small", latent_channels=4).latent_channels == 4
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        AutoencoderConfig.from_name("huge")
    assert 10_000 < tiny().num_params() < 100_000
    # the shipped model (DiT + AE) must fit 32 MiB in bf16: the AE gets at most 5 MB of it
    assert Autoencoder(AutoencoderConfig.from_name("small")).num_params() <= 2_500_000


@pytest.fixture
def one_thread():
    """Small convs gain nothing from more threads, and spinning threads crawl when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_overfits_a_batch(one_thread):
    ae = tiny()
    x = structured_images(8, 32, 32)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss, metrics = ae_loss(ae, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        first = first or metrics
    assert set(metrics) >= {"loss", "l1", "l2", "latent_l2", "psnr"}
    assert metrics["loss"] < 0.25 * first["loss"]
    assert metrics["psnr"] > first["psnr"] + 10  # dB
