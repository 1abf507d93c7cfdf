# Sourced by the bench scripts: CPU time of processes, read from /proc.

# CPU seconds (user + system) used so far by the given processes, all threads included; a
# process that is gone counts nothing.
cpu_seconds() {
  local ticks=0 p f
  for p in "$@"; do
    f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    set -- $f
    ticks=$((ticks + ${12} + ${13}))
  done
  python3 -c "print($ticks / $(getconf CLK_TCK))"
}
