// Reads the shell command of a d-i preseed `late_command` the way debconf does: the
// "d-i preseed/late_command string" line and every line after it while the previous one
// ends in a backslash, joined with the backslash-newline removed.
export function lateCommand(cfg: string): string {
  const lines = cfg.split('\n');
  const start = lines.findIndex((l) => /^d-i\s+preseed\/late_command\s+string(\s|$)/.test(l));
  if (start < 0) throw new Error('no "d-i preseed/late_command string" line');
  let value = lines[start].replace(/^d-i\s+preseed\/late_command\s+string\s*/, '');
  let i = start;
  while (value.endsWith('\\')) {
    i += 1;
    if (i >= lines.length) throw new Error('late_command ends in a continuation backslash');
    value = value.slice(0, -1) + lines[i];
  }
  return value.trim();
}
