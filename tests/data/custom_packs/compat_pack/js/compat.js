import { app } from "../../scripts/app.js";

app.registerExtension({ name: "compat_pack.hello" });
