// What the acceptance tests look for on a screen, by colour: xrdp's login screen, its
// refusal box, the XFCE desktop. Checked against real screenshots in screens.test.ts.
import { shareOf, distinctColours, type Rgb } from './pixels.js';

// xrdp's login screen (its xrdp.ini as Debian ships it): the window background and the
// grey of its dialogs (the login box, and the "Connection Log" box that says a login failed)
const XRDP_BACKGROUND = '009cb5';
const XRDP_DIALOG = 'dedede';
// XFCE 4.18 as Debian ships it, without a wallpaper package: the light panel across the
// top and the plain dark blue desktop
const XFCE_PANEL = 'f6f5f4';
const XFCE_DESKTOP = '152233';

/** xrdp's own login screen: mostly its background colour, with the grey dialog on it. */
export function isXrdpLogin(img: Rgb): boolean {
  return shareOf(img, XRDP_BACKGROUND, 6) > 0.3 && shareOf(img, XRDP_DIALOG, 6) > 0.05;
}

/** xrdp's "Connection Log" after a refused login: its grey box on black, no desktop. */
export function isXrdpRefusal(img: Rgb): boolean {
  return shareOf(img, XRDP_DIALOG, 6) > 0.05 && shareOf(img, '000000', 0) > 0.4 && !isXfceDesktop(img);
}

/** The XFCE desktop: the panel strip along the top, the desktop colour below it, icons on it. */
export function isXfceDesktop(img: Rgb): boolean {
  const panel = shareOf(img, XFCE_PANEL, 10, { x: 0, y: 2, w: img.width, h: 16 });
  const desk = shareOf(img, XFCE_DESKTOP, 10, { x: 0, y: 40, w: img.width, h: img.height - 120 });
  return panel > 0.5 && desk > 0.6 && distinctColours(img) > 100;
}

