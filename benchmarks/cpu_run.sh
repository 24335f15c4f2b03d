#!/usr/bin/env bash
# The CPU benchmarks of the scan backends, session by session, run one after the other on a
# quiet machine; results in benchmarks/results/cpu/, logs beside them.
#   bash benchmarks/cpu_run.sh                 # every case (hours)
#   ONLY=eighth bash benchmarks/cpu_run.sh     # the cases whose name matches a regex
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
R=benchmarks/results/cpu
mkdir -p $R
run() {  # name seconds command...
  local name=$1 limit=$2; shift 2
  [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]] && return 0
  echo "== $name" >&2
  timeout "$limit" "$@" > $R/$name.txt 2>&1 || echo "$name: exit $?" >> $R/$name.txt
}
run scan_cpp_b1 600 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_cpp_b1.json
run scan_backward_cpp_b1 600 $PY benchmarks/scan_backward.py --threads 2 --rounds 3 --json $R/scan_backward_cpp_b1.json
run vmamba_vs_deit_cpp_b1 600 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_cpp_b1.json
run vmamba_vs_deit_cpp_b8 600 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_cpp_b8.json
run medmamba_vs_deit_cpp_b8 600 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --iters 10 --json $R/medmamba_vs_deit_cpp_b8.json
run vim_vs_deit_cpp_b1 600 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_cpp_b1.json
run vim_vs_deit_cpp_b8 600 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vim_vs_deit_cpp_b8.json
run compile_vs_eager_b1 900 $PY benchmarks/compile_vs_eager.py --threads 2 --pairs deit_small_patch16_224=none,deit_small_patch16_224=tome:r=13,vmamba_tiny_s1l8=none,vmamba_tiny_s1l8=quartermap --json $R/compile_vs_eager_b1.json
# fifth session (the fused MLP, Δ in the kernel, channels-last stems; each row also against a
# DeiT-S control with the same fused MLP)
run vmamba_vs_deit_cpp_mlp_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_cpp_mlp_b1.json
run vmamba_vs_deit_cpp_mlp_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --json $R/vmamba_vs_deit_cpp_mlp_b8.json
run medmamba_vs_deit_cpp_mlp_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --json $R/medmamba_vs_deit_cpp_mlp_b8.json
run compile_vs_eager_medmamba_b1 1500 $PY benchmarks/compile_vs_eager.py --threads 2 --pairs medmamba_tiny=none,medmamba_tiny=quartermap,vmamba_tiny_s1l8=none --json $R/compile_vs_eager_medmamba_b1.json
# the same after the inline exp/softplus (build D in the README), and the scan microbenchmark
run vmamba_vs_deit_cpp_fastexp_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_cpp_fastexp_b1.json
run vmamba_vs_deit_cpp_fastexp_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --json $R/vmamba_vs_deit_cpp_fastexp_b8.json
run vmamba_vs_deit_cpp_fastexp_b8_long 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 40 --rounds 20 --json $R/vmamba_vs_deit_cpp_fastexp_b8_long.json
run medmamba_vs_deit_cpp_fastexp_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --json $R/medmamba_vs_deit_cpp_fastexp_b8.json
run vim_vs_deit_cpp_fastexp_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_cpp_fastexp_b1.json
run scan_cpp_fastexp_b1 900 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_cpp_fastexp_b1.json
run compile_vs_eager_vim_topvim_b1 1200 $PY benchmarks/compile_vs_eager.py --threads 2 --pairs vim_small=topvim --json $R/compile_vs_eager_vim_topvim_b1.json
# sixth session: the torch scan's exp2 decays, one-loop chunks and step-by-step path for d_state > 1
run scan_paths_b1_b8 1800 $PY benchmarks/scan_paths.py --threads 2 --json $R/scan_paths_b1_b8.json
run scan_torch_stepwise_b1 900 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_torch_stepwise_b1.json
run vim_vs_deit_stepwise_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_stepwise_b1.json
run medmamba_vs_deit_stepwise_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --json $R/medmamba_vs_deit_stepwise_b8.json
run vmamba_vs_deit_stepwise_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_stepwise_b1.json
# the cpp channel-major forward's inline decays at d_state 16 and its vectorised softplus
run scan_cpp_inline_exp_b1 900 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_cpp_inline_exp_b1.json
run vim_vs_deit_cpp_inline_exp_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_cpp_inline_exp_b1.json
# seventh session: timing keeps glibc's freed memory (tokenred.timing.keep_freed_memory); each
# case also with TOKENRED_MALLOC=default (glibc's own behaviour), to show what the setting changes
run scan_kept_b1 900 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_kept_b1.json
run scan_defaults_b1 900 env TOKENRED_MALLOC=default $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_defaults_b1.json
run medmamba_vs_deit_kept_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --json $R/medmamba_vs_deit_kept_b8.json
run medmamba_vs_deit_defaults_b8 1800 env TOKENRED_MALLOC=default $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --json $R/medmamba_vs_deit_defaults_b8.json
run vmamba_vs_deit_kept_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_kept_b1.json
run vim_vs_deit_kept_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_kept_b1.json
run scan_paths_kept_b1_b8 1800 $PY benchmarks/scan_paths.py --threads 2 --json $R/scan_paths_kept_b1_b8.json
# eighth session: fewer buffers in the step-by-step torch scan; selective_scan.py also times each
# call repeated at once (inputs in cache); the whole models again, on the day's machine
run scan_eighth_b1 900 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_eighth_b1.json
run vmamba_vs_deit_eighth_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_eighth_b1.json
run vmamba_vs_deit_eighth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --json $R/vmamba_vs_deit_eighth_b8.json
run medmamba_vs_deit_eighth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --json $R/medmamba_vs_deit_eighth_b8.json
run vim_vs_deit_eighth_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_eighth_b1.json
run medmamba_old_vs_new_eighth_b8 1800 bash benchmarks/old_vs_new.sh d43502c medmamba_tiny 8
# ninth session (an Intel Xeon host): the torch scan's exponentials by machine (Intel with MKL: decays
# by exp and torch's softplus; elsewhere exp2 and the pieces), and the models again on this host
run cpu_math_ninth_b1 900 $PY benchmarks/cpu_math.py --threads 2 --json $R/cpu_math_ninth_b1.json
run cpu_math_ninth_b8 1800 $PY benchmarks/cpu_math.py --threads 2 --batch-size 8 --rounds 9 --models vmamba_tiny_s1l8,medmamba_tiny --iters 10 --json $R/cpu_math_ninth_b8.json
run scan_ninth_b1 900 $PY benchmarks/selective_scan.py --threads 2 --json $R/scan_ninth_b1.json
run vmamba_vs_deit_ninth_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_ninth_b1.json
run vim_vs_deit_ninth_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_ninth_b1.json
# repeats on the same host, for the spread (the host was noisy: DeiT-S at batch 1 took 51-68 ms)
run scan_ninth_n16_run2 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_ninth_n16_run2.json
run scan_ninth_n16_run3 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_ninth_n16_run3.json
run vmamba_vs_deit_ninth_b1_run2 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --reference no --json $R/vmamba_vs_deit_ninth_b1_run2.json
# Vim's causal depthwise conv + SiLU as shifted multiply-adds on time-major storage (and, for
# comparison, VMamba's fused MLP), each against the same model with the kernel off
run fused_conv1d_vim_ninth_b1 900 $PY benchmarks/fused_kernels.py --threads 2 --json $R/fused_conv1d_vim_ninth_b1.json
run fused_conv1d_vim_ninth_b8 1800 $PY benchmarks/fused_kernels.py --threads 2 --batch-size 8 --iters 10 --json $R/fused_conv1d_vim_ninth_b8.json
run fused_mlp_vmamba_ninth_b1 900 $PY benchmarks/fused_kernels.py --threads 2 --model vmamba_tiny_s1l8 --kernel mlp --json $R/fused_mlp_vmamba_ninth_b1.json
run vim_vs_deit_conv_ninth_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_conv_ninth_b1.json
# tenth session (the same kind of Intel Xeon host): auto takes the compiled cpp scan on CPU; the
# goal's ratio under the default backend (the header line names it), both batch sizes
run vmamba_vs_deit_tenth_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --reference no --json $R/vmamba_vs_deit_tenth_b1.json
run vmamba_vs_deit_tenth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_tenth_b8.json
# the torch scan against the loop at d_state 16 again on this host (two runs, for the spread)
run scan_tenth_n16_run1 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_tenth_n16_run1.json
run scan_tenth_n16_run2 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_tenth_n16_run2.json
run vmamba_vs_deit_tenth_b8_run2 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_tenth_b8_run2.json
# the cpp build with 512-bit vectors preferred (GCC prefers 256-bit ones on AVX-512 CPUs by
# default) against today's flags, whole forwards (run with --add when the flag was new; it is
# one of today's flags since, so a rerun drops it instead and its ratio reads the other way)
run cpp_flags_tenth_b1 1200 $PY benchmarks/cpp_flags.py --threads 2 --drop=-mprefer-vector-width=512 --json $R/cpp_flags_tenth_b1.json
run cpp_flags_tenth_b8 1800 $PY benchmarks/cpp_flags.py --threads 2 --batch-size 8 --iters 10 --models vmamba_tiny_s1l8,medmamba_tiny --drop=-mprefer-vector-width=512 --json $R/cpp_flags_tenth_b8.json
# after the smaller stepwise blocks where they keep >= 8 steps (and the 512-bit cpp build)
run scan_tenth_blocks_run1 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_tenth_blocks_run1.json
run scan_tenth_blocks_run2 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_tenth_blocks_run2.json
run vmamba_vs_deit_tenth_after_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --reference no --json $R/vmamba_vs_deit_tenth_after_b1.json
run vmamba_vs_deit_tenth_after_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_tenth_after_b8.json
run medmamba_vs_deit_tenth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --iters 10 --json $R/medmamba_vs_deit_tenth_b8.json
run vim_vs_deit_tenth_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_tenth_b1.json
# the stepwise blocks side by side: today's rule against the earlier one (256K values a block)
run scan_setting_blocks_tenth 1200 $PY benchmarks/scan_setting.py --threads 2 --set _STEPWISE_SMALL_BLOCK_ELEMENTS=262144 --json $R/scan_setting_blocks_tenth.json
# MedMamba-T against the issue's start (its default then: torch) with today's default (cpp here)
run medmamba_old_vs_new_tenth_b8 1800 bash benchmarks/old_vs_new.sh d43502c medmamba_tiny 8
run vmamba_vs_deit_tenth_after_b1_run2 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --reference no --json $R/vmamba_vs_deit_tenth_after_b1_run2.json
run vmamba_vs_deit_tenth_after_b8_run2 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_tenth_after_b8_run2.json
# twelfth session: the cpp build with -fopenmp (without it at::parallel_for ran every kernel on
# one thread) against the build without it, then the goals again
run cpp_flags_twelfth_omp_b1 1200 $PY benchmarks/cpp_flags.py --threads 2 --drop=-fopenmp --json $R/cpp_flags_twelfth_omp_b1.json
run cpp_flags_twelfth_omp_b8 1800 $PY benchmarks/cpp_flags.py --threads 2 --batch-size 8 --iters 10 --models vmamba_tiny_s1l8,medmamba_tiny --drop=-fopenmp --json $R/cpp_flags_twelfth_omp_b8.json
run vmamba_vs_deit_twelfth_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_twelfth_b1.json
run vmamba_vs_deit_twelfth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_twelfth_b8.json
run medmamba_vs_deit_twelfth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --iters 10 --json $R/medmamba_vs_deit_twelfth_b8.json
run vim_vs_deit_twelfth_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_twelfth_b1.json
run scan_twelfth_n16 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_twelfth_n16.json
run vmamba_vs_deit_twelfth_b1_run2 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --reference no --json $R/vmamba_vs_deit_twelfth_b1_run2.json
run vmamba_vs_deit_twelfth_b8_run2 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_twelfth_b8_run2.json
run vmamba_vs_deit_twelfth_b8_run3 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_twelfth_b8_run3.json
run compile_vs_eager_twelfth_b1 1500 $PY benchmarks/compile_vs_eager.py --threads 2 --pairs vmamba_tiny_s1l8=none,vmamba_tiny_s1l8=quartermap,medmamba_tiny=none,medmamba_tiny=quartermap --json $R/compile_vs_eager_twelfth_b1.json
# after the fused MLP's rule stopped breaking compiled graphs at every MLP (one graph per model)
run compile_vs_eager_twelfth_onegraph_b1 1800 $PY benchmarks/compile_vs_eager.py --threads 2 --pairs vmamba_tiny_s1l8=none,vmamba_tiny_s1l8=quartermap,medmamba_tiny=none,medmamba_tiny=quartermap,vim_small=none,vim_small=topvim --json $R/compile_vs_eager_twelfth_onegraph_b1.json
# after the z gate moved into the time-major kernel and Vim's batch-outer inputs took that kernel
run vim_vs_deit_twelfth_gate_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_twelfth_gate_b1.json
run vim_vs_deit_twelfth_gate_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vim_vs_deit_twelfth_gate_b8.json
# the grid methods and QuarterMap's site choice with the default backend (cpp since the tenth
# session; the 2026-11-27 runs were with the torch scan), after the token subsets took the fused kernel
run grid_methods_twelfth_b8 3000 $PY benchmarks/grid_methods.py --where --json $R/grid_methods_twelfth_b8.json
# thirteenth session (an AMD EPYC host with AVX-512, the first since the OpenMP build): the goals
# again, the -fopenmp and 512-bit flags dropped against today's build, the d_state 16 scans
run vmamba_vs_deit_thirteenth_b1 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --json $R/vmamba_vs_deit_thirteenth_b1.json
run vmamba_vs_deit_thirteenth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_thirteenth_b8.json
run cpp_flags_thirteenth_omp_b1 1200 $PY benchmarks/cpp_flags.py --threads 2 --drop=-fopenmp --json $R/cpp_flags_thirteenth_omp_b1.json
run cpp_flags_thirteenth_omp_b8 1800 $PY benchmarks/cpp_flags.py --threads 2 --batch-size 8 --iters 10 --models vmamba_tiny_s1l8,medmamba_tiny --drop=-fopenmp --json $R/cpp_flags_thirteenth_omp_b8.json
run cpp_flags_thirteenth_512_b1 1200 $PY benchmarks/cpp_flags.py --threads 2 --drop=-mprefer-vector-width=512 --json $R/cpp_flags_thirteenth_512_b1.json
run cpp_flags_thirteenth_512_b8 1800 $PY benchmarks/cpp_flags.py --threads 2 --batch-size 8 --iters 10 --models vmamba_tiny_s1l8,medmamba_tiny --drop=-mprefer-vector-width=512 --json $R/cpp_flags_thirteenth_512_b8.json
run medmamba_vs_deit_thirteenth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm medmamba_tiny --threads 2 --batch-size 8 --reference no --iters 10 --json $R/medmamba_vs_deit_thirteenth_b8.json
run vim_vs_deit_thirteenth_b1 900 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --reference no --json $R/vim_vs_deit_thirteenth_b1.json
run vim_vs_deit_thirteenth_b8 1800 $PY benchmarks/vmamba_vs_deit.py --ssm vim_small --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vim_vs_deit_thirteenth_b8.json
run scan_thirteenth_n16 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_thirteenth_n16.json
run vmamba_vs_deit_thirteenth_b1_run2 900 $PY benchmarks/vmamba_vs_deit.py --threads 2 --reference no --json $R/vmamba_vs_deit_thirteenth_b1_run2.json
run vmamba_vs_deit_thirteenth_b8_run2 1800 $PY benchmarks/vmamba_vs_deit.py --threads 2 --batch-size 8 --reference no --iters 10 --json $R/vmamba_vs_deit_thirteenth_b8_run2.json
# fourteenth session (an AMD EPYC host again, no code change): the d_state 16 scans, six runs
for i in "" _run2 _run3 _run4 _run5 _run6; do
  run scan_fourteenth_n16$i 900 $PY benchmarks/selective_scan.py --threads 2 --only N16 --json $R/scan_fourteenth_n16$i.json
done
