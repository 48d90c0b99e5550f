"""An AutoGen AgentChat `AssistantAgent` with one Python tool on the mesh, through
`OpenAIChatCompletionClient` pointed at `kanbanmesh up`.

The agent calls the tool, AutoGen runs it and hands the result back to the model
(`reflect_on_tool_use`), whose answer ends the run.

    kanbanmesh up                      # another terminal: server, broker, a llama worker
    python examples/agents/autogen_agent.py --base-url http://127.0.0.1:8765/v1

The mesh's model names are not OpenAI's, so the client gets a `model_info` saying what the
model can do. `--json` prints the run as one JSON object (the tests read it). See README.md
beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.messages import TextMessage, ToolCallExecutionEvent, ToolCallRequestEvent
from autogen_core.models import CreateResult, LLMMessage, ModelInfo
from autogen_core.tools import Tool, ToolSchema
from autogen_ext.models.openai import OpenAIChatCompletionClient

MODEL_INFO = ModelInfo(vision=False, function_calling=True, json_output=True, structured_output=True,
                       family="unknown")


async def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny and 22 degrees Celsius in {city}."


class ToolRequiredClient(OpenAIChatCompletionClient):
    """Asks for a call (`tool_choice: "required"`) whenever the agent offers tools. The agent
    asks `auto`, and a small model seldom chooses a tool on its own; once the tool has run,
    the agent asks again without tools, so the answer is text."""

    async def create(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = (),
                     tool_choice: Any = "auto", **kwargs: Any) -> CreateResult:
        return await super().create(messages, tools=tools, tool_choice="required" if tools else tool_choice,
                                    **kwargs)


async def run(base_url: str, model: str, api_key: str, question: str, *, let_model_choose: bool) -> dict[str, Any]:
    client_type = OpenAIChatCompletionClient if let_model_choose else ToolRequiredClient
    client = client_type(model=model, base_url=base_url, api_key=api_key, model_info=MODEL_INFO,
                         temperature=0.0, max_tokens=96)
    agent = AssistantAgent("weather", model_client=client, tools=[get_weather], reflect_on_tool_use=True,
                           system_message="You answer questions about the weather.")
    try:
        result = await agent.run(task=question)
    finally:
        await client.close()
    calls, outputs, answer = [], [], ""
    for message in result.messages:
        if isinstance(message, ToolCallRequestEvent):
            calls += [{"name": c.name, "arguments": c.arguments, "id": c.id} for c in message.content]
        elif isinstance(message, ToolCallExecutionEvent):
            outputs += [{"id": r.call_id, "result": r.content, "is_error": r.is_error} for r in message.content]
        elif isinstance(message, TextMessage) and message.source == "weather":
            answer = message.content
    return {"calls": calls, "results": outputs, "answer": answer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8765/v1")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model the mesh serves")
    parser.add_argument("--api-key", default="unused", help="a client token, with auth on")
    parser.add_argument("--question", default="What is the weather in Paris?")
    parser.add_argument("--let-model-choose", action="store_true",
                        help="tool_choice auto, as the agent asks (a bigger model)")
    parser.add_argument("--json", action="store_true", help="print the run as one JSON object")
    args = parser.parse_args()
    outcome = asyncio.run(run(args.base_url, args.model, args.api_key, args.question,
                              let_model_choose=args.let_model_choose))
    if args.json:
        print(json.dumps(outcome))
        return
    for call, output in zip(outcome["calls"], outcome["results"], strict=False):
        print(f"tool call: {call['name']}({call['arguments']}) -> {output['result']}")
    print(f"answer: {outcome['answer']}")


if __name__ == "__main__":
    main()
