// kod: Firefox in a container, shown on the user's desktop through VNC.
// A clean first start: no welcome/first-run tabs, no privacy-notice tab, no default-browser check.
pref("browser.aboutwelcome.enabled", false);
pref("browser.startup.homepage_override.mstone", "ignore");
pref("startup.homepage_welcome_url", "");
pref("startup.homepage_welcome_url.additional", "");
pref("datareporting.policy.firstRunURL", "");
pref("datareporting.policy.dataSubmissionPolicyBypassNotification", true);
pref("toolkit.telemetry.reportingpolicy.firstRun", false);
pref("browser.shell.checkDefaultBrowser", false);
pref("browser.messaging-system.whatsNewPanel.enabled", false);
// Docker's and Kubernetes' default seccomp profile forbids unprivileged user namespaces, so the
// content sandbox runs with fewer layers; the container is the isolation boundary here, and the
// warning bar about it would be shown on every start.
pref("security.sandbox.warn_unprivileged_namespaces", false);
// Sound plays without a click (a user's video site, the tests' tone page).
pref("media.autoplay.default", 0);
pref("media.autoplay.blocking_policy", 0);
// The container is stopped, not quit, when a session is cancelled: do not offer to restore.
pref("browser.sessionstore.resume_from_crash", false);
// One window, one app: quitting with several tabs open should not need an extra dialog.
pref("browser.tabs.warnOnClose", false);
pref("browser.warnOnQuit", false);
pref("browser.warnOnQuitShortcut", false);
