#!/bin/bash
# The README's "where each model stands" table on ML-100k, from the committed rank files of
# tries 33 and 41–47 (each T5 run as chosen on validation by benchmarks/recent_items.py).
#   bash benchmarks/ml100k_standing.sh        # seconds; writes benchmarks/results/ml100k-standing/
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
r() { local out=""; for x in "$@"; do out="$out,$R/$x/ranks.json"; done; echo "${out#,}"; }
python benchmarks/standing.py --against sasrec-kg --out $R/ml100k-standing \
  sasrec=$(r ml100k-try33-sasrec-tes-seed0 ml100k-try33-sasrec-tes-seed1 ml100k-try33-sasrec-tes-seed2) \
  sasrec-kg=$(r ml100k-try41-recent-sasrec-kg-s0 ml100k-try41-recent-sasrec-kg-s1 ml100k-try41-recent-sasrec-kg-s2) \
  sasrec-kg-dw=$(r ml100k-try42-sasrec-kg-dirwri-s0 ml100k-try43-sasrec-kg-dirwri-s1 ml100k-try43-sasrec-kg-dirwri-s2) \
  p5@1.5M=$(r ml100k-try41-recent-base-s0 ml100k-try41-recent-base-s1) \
  p5@2.7M=$(r ml100k-try47-recent-base-p2-s0) \
  p5@3.9M=$(r ml100k-try47-recent-base-p3-s0) \
  p5@4.2M=$(r ml100k-try47-recent-nk-nokg-p3-s0) \
  p5-kg@1.5M=$(r ml100k-try41-recent-base-ke-s0 ml100k-try41-recent-base-ke-s1 ml100k-try44-recent-base-ke-s2) \
  p5-kg@2.7M=$(r ml100k-try42-recent-base-ke-p2-s0 ml100k-try42-recent-base-ke-p2-s1 ml100k-try47-recent-base-ke-p2-s2) \
  p5-kg@3.9M=$(r ml100k-try43-recent-base-ke-p3-s0 ml100k-try43-recent-base-ke-p3-s1 ml100k-try47-recent-base-ke-p3-s2) \
  kp4sr@1.8M=$(r ml100k-try41-recent-kp4sr-ke20-s0 ml100k-try41-recent-kp4sr-ke20-s1) \
  kp4sr-no-prompts@1.8M=$(r ml100k-try41-recent-nk-ke20-s0 ml100k-try42-recent-nk-ke20-s1) \
  kp4sr-no-tree-mask@1.8M=$(r ml100k-try42-recent-ntm-ke20-s0) \
  kp4sr@3.0M=$(r ml100k-try42-recent-kp4sr-p2-s0 ml100k-try42-recent-kp4sr-p2-s1) \
  kp4sr-no-prompts@3.0M=$(r ml100k-try42-recent-nk-p2-s0 ml100k-try42-recent-nk-p2-s1) \
  kp4sr@4.2M=$(r ml100k-try43-recent-kp4sr-p3-s0 ml100k-try43-recent-kp4sr-p3-s1) \
  kp4sr-no-prompts@4.2M=$(r ml100k-try44-recent-nk-p3-s0 ml100k-try44-recent-nk-p3-s1) \
  kp4sr-prompts-only@4.2M=$(r ml100k-try47-recent-kp4sr-nokg-p3-s0) \
  kp4sr-no-tree-mask@4.2M=$(r ml100k-try44-recent-ntm-p3-s0 ml100k-try44-recent-ntm-p3-s1) \
  kp4sr-hop2-all@4.0M=$(r ml100k-try44-recent-kp4sr-h2all256-p3-s0 ml100k-try45-recent-kp4sr-h2all256-p3-s1 ml100k-try47-recent-kp4sr-h2all256-p3-s2) \
  kp4sr-hop2-all-no-tree-mask@4.0M=$(r ml100k-try44-recent-ntm-h2all256-p3-s0 ml100k-try45-recent-ntm-h2all256-p3-s1) \
  kp4sr-hop2-all@4.2M=$(r ml100k-try45-recent-kp4sr-h2all256-300k-p3-s0 ml100k-try46-recent-kp4sr-h2all256-300k-p3-s1) \
  kp4sr-hop2-all-no-tree-mask@4.2M=$(r ml100k-try45-recent-ntm-h2all256-300k-p3-s0 ml100k-try46-recent-ntm-h2all256-300k-p3-s1) \
  kp4sr-hop2-all-xmpp@4.0M=$(r ml100k-try45-recent-kp4sr-h2all256-xmpp-p3-s0 ml100k-try46-recent-kp4sr-h2all256-xmpp-p3-s1) \
  kp4sr-hop2-all-no-tree-mask-xmpp@4.0M=$(r ml100k-try46-recent-ntm-h2all256-xmpp-p3-s0) \
  kp4sr-hop2-all-d6@4.0M=$(r ml100k-try46-recent-kp4sr-h2all256d6-p3-s0)
