#!/bin/bash
# short identical runs at several commits: are they bit-identical?
set -u
F="--model resnet20 --data cifar10 --recipe cifar --groups 8 --channels-last --batch-size 128 --norm gn+pn --seed 0 --subset 2000 --epochs 3 --data-dir ../shared/data/cifar10-jpeg.zip"
for spec in "wt-ff46 128" "wt-206f 0" "wt-206f 128" "runs-wt 128" "runs-wt 0"; do
  set -- $spec
  out=/tmp/bisect/$1-probe$2; rm -rf $out
  (cd /work/$1 && OMP_NUM_THREADS=1 python -m proxynorm.cli train --out $out $F --probe $2 > $out.log 2>&1)
  echo "$spec $(tail -1 $out.log)"
done
