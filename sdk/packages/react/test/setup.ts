import { configure } from "@testing-library/react";

// The live server shares the machine with the test run: give answers time to arrive.
configure({ asyncUtilTimeout: 20_000 });
