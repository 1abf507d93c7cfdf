# Sourced by the bench scripts: CPU time of processes, read from /proc without starting any
# process (the reading must be quick and on time while the load fills the cores).

CLK_TCK=$(getconf CLK_TCK)

# CPU clock ticks (user + system; CLK_TCK a second) used so far by the given processes, all
# threads included; a process that is gone counts nothing.
cpu_ticks() {
  local ticks=0 p line
  for p in "$@"; do
    read -r line 2>/dev/null <"/proc/$p/stat" || continue
    set -- ${line##*) }
    ticks=$((ticks + ${12} + ${13}))
  done
  echo "$ticks"
}

# Whether process $1 is still running (neither gone nor a zombie).
running() {
  local line
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  line=${line##*) }
  [ "${line%% *}" != Z ]
}
