source benchmarks/device_setup.sh
python3 benchmarks/ssd_kernel_breakdown.py $OUT/breakdown.json > $OUT/breakdown.log 2>&1
cat $OUT/breakdown.log | cut -c1-150
