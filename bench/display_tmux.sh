#!/usr/bin/env bash
# The `rich` reporter on a real terminal: runs the quickstart inside tmux at 80 and 160 columns,
# captures the pane every second (`tmux capture-pane -p`) into files, then checks every capture
# taken while training (from the first drawing of the bar until "- evaluating") for the step count
# (`40/300`) and, after the first few captures, a measured ETA (`eta 0:01:23`, never `-:--:--`),
# and every capture for library chatter (tokenizer bars, raw warnings). Exit status 1 on a failure.
#
#   bench/display_tmux.sh                                  # both widths, one after the other
#   WIDTHS=80 bench/display_tmux.sh --set strategy.type=lora
#   OUT=/tmp/captures RECIPE=recipes/quickstart-lm.toml bench/display_tmux.sh
#
# Extra arguments go to `finetune run`. The captures stay in $OUT/w<width>/ for reading.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FINETUNE=${FINETUNE:-$ROOT/.venv/bin/finetune}
RECIPE=$(realpath "${RECIPE:-$ROOT/recipes/quickstart.toml}")
WIDTHS=${WIDTHS:-"80 160"}
HEIGHT=${HEIGHT:-45}
LIMIT=${LIMIT:-900} # seconds a run may take
OUT=${OUT:-$(mktemp -d /tmp/display-tmux.XXXXXX)}
GRACE=3 # captures after the bar first shows during which the ETA may still be `eta …`
failed=0

for width in $WIDTHS; do
    dir="$OUT/w$width"
    rm -rf "$dir" && mkdir -p "$dir"
    session="finetune-display-$width-$$"
    # The run's exit status ends up on screen; the shell then waits so the last screen can be captured.
    command="cd /tmp && $(printf '%q ' "$FINETUNE" run "$RECIPE" --output "$dir/run" "$@"); echo \"__DONE__ rc=\$?\"; sleep $LIMIT"
    tmux new-session -d -s "$session" -x "$width" -y "$HEIGHT" "$command"
    trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT
    n=0
    while ((n < LIMIT)); do
        n=$((n + 1))
        capture="$dir/capture-$(printf %04d "$n").txt"
        tmux capture-pane -p -t "$session" >"$capture"
        grep -q "__DONE__" "$capture" && break
        sleep 1
    done
    tmux kill-session -t "$session" 2>/dev/null || true

    # Check the captures.
    training=0 measured=0 missing_step=0 missing_eta=0 wide=0 chatter=0
    in_training=0 since_bar=0
    for capture in "$dir"/capture-*.txt; do
        if grep -qE "Pre-processing sequences|UserWarning|FutureWarning|-:--:--" "$capture"; then
            chatter=$((chatter + 1))
            echo "  $capture: library chatter or an unmeasured ETA"
        fi
        if LC_ALL=C.UTF-8 grep -qE "^.{$((width + 1))}" "$capture"; then # characters, not bytes
            wide=$((wide + 1))
        fi
        grep -q -- "- evaluating" "$capture" && in_training=0 && continue
        if ((in_training == 0)) && grep -qE "^training .*[0-9]+/[0-9]+" "$capture"; then
            in_training=1
        fi
        ((in_training)) || continue
        training=$((training + 1)) since_bar=$((since_bar + 1))
        if ! grep -qE "^training .* [0-9]+/[0-9]+ " "$capture"; then
            missing_step=$((missing_step + 1))
            echo "  $capture: no step/total on the bar line"
        fi
        if grep -qE "^training .*eta [0-9]+:[0-9]{2}:[0-9]{2}" "$capture"; then
            measured=$((measured + 1))
        elif ((since_bar > GRACE)); then
            missing_eta=$((missing_eta + 1))
            echo "  $capture: no ETA on the bar line"
        fi
    done
    last=$(ls "$dir"/capture-*.txt | tail -1)
    rc=$(grep -o "__DONE__ rc=[0-9]*" "$last" | cut -d= -f2 || echo "?")
    echo "width $width: $n captures in $dir, run exit status $rc; $training during training," \
        "$measured with a measured ETA; without step/total: $missing_step, without ETA: $missing_eta;" \
        "with chatter: $chatter; wider than $width: $wide"
    echo "  a capture during training:"
    with_eta=$(grep -lE "^training .*eta [0-9]" "$dir"/capture-*.txt || true)
    mid=$(echo "$with_eta" | sed -n "$(($(echo "$with_eta" | wc -l) * 2 / 3 + 1))p")
    [[ -n "$mid" ]] && grep -A12 -E "^training " "$mid" | sed 's/^/    | /'
    if [[ "$rc" != 0 ]] || ((training == 0 || missing_step || missing_eta || chatter || wide)); then
        failed=1
    fi
done
exit $failed
