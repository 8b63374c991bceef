"""The SDXL throughput harness and the FLOP counter behind its TFLOP/s, run for real on the tiny model
(so they do not rot between GPU sessions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from sdxl_flops import sample_flops, steps_run  # noqa: E402


def test_flop_count_matches_a_counted_pipeline_call(tiny_model_dir):
    """The per-component count on the meta device equals FlopCounterMode around a real pipeline call."""
    from diffusers import StableDiffusionXLInpaintPipeline
    from diffusers.models.attention_processor import AttnProcessor
    from PIL import Image
    from torch.utils.flop_counter import FlopCounterMode

    pipe = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_model_dir)
    pipe.set_progress_bar_config(disable=True)
    # The counter has no formula for the CPU's fused attention kernel: classic attention's matmuls it counts
    # (on the meta device SDPA runs as matmuls too, and on CUDA its kernels have formulas).
    pipe.unet.set_attn_processor(AttnProcessor())
    pipe.vae.set_attn_processor(AttnProcessor())
    image, mask = Image.new("RGB", (64, 64), (120, 60, 50)), Image.new("L", (64, 64), 255)
    with FlopCounterMode(display=False) as counter:
        pipe(prompt="a polyp", image=image, mask_image=mask, height=64, width=64, num_inference_steps=4,
             strength=0.99, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))
    whole = counter.get_total_flops()
    counted = sample_flops(pipe.unet.config, pipe.vae.config, 64).total(steps_run(4, 0.99))
    text_encoders = whole - counted  # the only part the count leaves out
    assert 0 <= text_encoders < 0.02 * whole


def test_harness_runs_on_the_tiny_model(tmp_path):
    out = tmp_path / "results.json"
    command = [sys.executable, str(ROOT / "bench/bench_sdxl_throughput.py"), "--tiny", "--cache", str(tmp_path),
               "--n", "2", "--batch", "2", "--resolution", "64", "--output-resolution", "128", "--steps", "2",
               "--crop-min", "64", "--overlap", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert list(results) == ["baseline", "engine", "+overlap"]
    for r in results.values():
        assert r["images"] == 2 and r["seconds"] > 0 and r["flops"] > 0 and r["warmup_s"] > 0
    assert results["+overlap"]["pixel_diff"] == 0  # overlapping CPU work changes no pixel
    assert results["engine"]["stages"]["model"] > 0 and results["engine"]["stages"]["png_encode"] > 0
    table = done.stdout
    assert "% floor" in table and "baseline" in table and "+overlap" in table


def test_kernel_kinds_from_the_names_an_h200_trace_gave():
    from profile_sdxl_unet import kernel_kind

    names = {
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT": "matmul",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1x1x1": "attention",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x128x64": "convolution",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>": "normalisation",
        "triton_red_fused_native_group_norm_silu_3": "normalisation",
        "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<": "pointwise",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float>": "pointwise",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<c10::BFloat16>": "normalisation",
        # inductor's fused kernels carry the names of the ops they absorbed (from a compiled H200 trace)
        "triton_poi_fused_gelu_mul_split_view_52": "pointwise",
        "triton_poi_fused_clone_convolution_native_group_norm_silu_94": "normalisation",
        "triton_red_fused_add_div_native_layer_norm_view_54": "normalisation",
        "triton_poi_fused_addmm_gelu_5": "pointwise",
        "triton_poi_fused_clone_scaled_dot_product_attention_2": "pointwise",
        "triton_per_fused_add_convert_element_type_7": "pointwise",
        "triton_tem_fused_addmm_3": "matmul",
    }
    assert {name: kernel_kind(name) for name in names} == names


def test_unet_profile_runs_on_the_tiny_model(tmp_path):
    out = tmp_path / "unet.json"
    command = [sys.executable, str(ROOT / "bench/profile_sdxl_unet.py"), "--tiny", "--side", "64", "--batch", "1",
               "--steps", "1", "--variants", "eager", "flash-attention", "compile", "--json", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, even where a GPU is present
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    eager, flash, compiled = result["variants"]
    assert eager["ms_per_step"] > 0 and eager["kinds_ms"]["convolution"] > 0 and eager["top_kernels"]
    assert flash["skipped"] and compiled["skipped"]  # measured on a GPU only
    assert result["flops_by_kind"]["convolution"] > 0 and result["flops_by_kind"]["matmul"] > 0
    assert "eager, by kind" in done.stdout
