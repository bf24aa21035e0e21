// Test-only: LOOPSHIP_TEST_PAUSE_AT=<step> makes the agent stop for good at that step and
// say so on stderr (`pause-at <step>`), so a fault test can kill -9 it at a known point
// instead of racing a log line. Unset (always, in production) it only reads the variable.
// Steps: verify (staging complete and verified, not yet moved), move (moved into place),
// mount (image mounted, nothing written), configure (first host file written), unmount
// (unmounted, loop still attached), switch (before `current` flips), boot (guest started).
export type PauseStep = 'verify' | 'move' | 'mount' | 'configure' | 'unmount' | 'switch' | 'boot';

export async function pauseAt(step: PauseStep): Promise<void> {
  if (process.env.LOOPSHIP_TEST_PAUSE_AT !== step) return;
  process.stderr.write(`pause-at ${step}\n`);
  // a pending promise alone would let node exit: the interval keeps it waiting
  await new Promise<never>(() => setInterval(() => {}, 60_000));
}
