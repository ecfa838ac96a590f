// A pack's web extension as published packs write them: the legacy script shims, a registered
// extension, and a call of the pack's own route from the page.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

app.registerExtension({
  name: "compat_pack.hello",
  async setup() {
    const answer = await api.fetchApi("/compat_pack/echo/from-page?x=2");
    window.compatPackEcho = await answer.json();
  },
});
