/* probe.h: machine limits measured in the same run as a benchmark.
 *
 * tide_probe_read_bw: DRAM read bandwidth. A buffer of `bytes` (allocated
 * and written once) is summed by all threads of the pool, each its own
 * contiguous slice, reps times; *gbps is the best pass in GB/s (1e9 B/s).
 * Use a buffer well above the last-level cache (e.g. 1 GiB). */
#ifndef TIDE_PROBE_H
#define TIDE_PROBE_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"
#include "pool.h"

int tide_probe_read_bw(tide_pool_t *pool, int64_t bytes, int32_t reps, double *gbps, tide_err_t *err);

#endif
