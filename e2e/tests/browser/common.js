// What both consoles' browser tests share: their settings from the environment the Rust test
// sets, a check that names what failed, and Chromium launched as CI runs it.
"use strict";
const { chromium } = require("playwright-core");

const env = (name) => {
  const value = process.env[name];
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

function check(condition, what) {
  if (!condition) throw new Error(`console check failed: ${what}`);
}

const launch = () =>
  chromium.launch({
    executablePath: env("QUIVER_CHROMIUM"),
    args: env("QUIVER_CHROMIUM_FLAGS").split(" "),
  });

module.exports = { env, check, launch };
