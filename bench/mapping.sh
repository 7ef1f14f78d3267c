# sourced by bench/run
bench_mapping() {
    put certmapd map_not_measured "pending"
}
